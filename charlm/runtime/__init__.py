"""Runtime: devices, threads, seeds and precision (`device`), files written whole (`files`),
processes and signals (`processes`), and the choices measured on this machine (`measured`)."""
