"""Characters per second of an exported model on ONNX Runtime against charlm's own generation, for
the README's table in "Run a model anywhere: ONNX and the browser".

    python scripts/bench_export.py                                  # trains the two models briefly first
    python scripts/bench_export.py --checkpoint a.safetensors --checkpoint b.safetensors --length 1000

For each checkpoint (by default the LSTM and the transformer `charlm train` makes of The Time Machine,
each trained for --train-seconds, since the speed of a step does not depend on how well it is trained),
named by its architecture and sizes, one after the other, one thread each:
  - charlm's generation: `TextModel.generate(prefix, length, num_samples=rows, precision="fp32")`;
  - ONNX Runtime (CPU, intra-op threads 1) on the file `charlm export` wrote: the prefix fed one id at a
    time, then `length` steps of `rows` rows, each next id drawn from the logits by numpy, as the
    README's snippet does.
Each is run once untimed, then timed as the best of --repeats. chars/s = rows * length / seconds
(the prefix's pass included for both). Prints a Markdown table with the CPU and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = ROOT / "corpora" / "timemachine.txt"
PREFIX = "the time "
MODELS = {"`charlm train corpora/timemachine.txt`": {"ensemble": 1},  # one model, as without --max-time
          "the same with `--model transformer`": {"model": "transformer"}}


def best_of(repeats: int, run) -> float:
    run()  # untimed: first-call costs (allocation, the runtime's graph set-up)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def charlm_rate(checkpoint: Path, rows: int, length: int, repeats: int) -> float:
    import charlm

    model = charlm.load(checkpoint)
    seconds = best_of(repeats, lambda: model.generate(PREFIX, length=length, num_samples=rows, seed=0,
                                                       precision="fp32"))
    return rows * length / seconds


def onnx_rate(path: Path, rows: int, length: int, repeats: int) -> float:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["charlm"])
    itos = meta["vocab"]["itos"]
    stoi = {token: index for index, token in enumerate(itos)}

    def generate() -> None:
        state = {"state." + s["name"]: np.full([rows if axis == s["batch_axis"] else size for axis, size in
                                                enumerate(s["shape"])], s["initial"], dtype=s["dtype"])
                 for s in meta["state"]}
        rng = np.random.default_rng(0)
        logits = None
        for token in PREFIX:
            logits, *after = session.run(None, {"ids": np.full(rows, stoi[token]), **state})
            state = dict(zip(state, after))
        for _ in range(length):
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p[:, 0] = 0
            p /= p.sum(axis=1, keepdims=True)
            ids = (p.cumsum(axis=1) < rng.random((rows, 1))).sum(axis=1).clip(max=len(itos) - 1)
            logits, *after = session.run(None, {"ids": ids.astype(np.int64), **state})
            state = dict(zip(state, after))

    return rows * length / best_of(repeats, generate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", type=Path, help="a language model (repeatable)")
    parser.add_argument("--train-seconds", type=float, default=20)
    parser.add_argument("--length", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    import charlm
    from charlm.export.onnx import export_onnx

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        checkpoints = {str(path): path for path in arguments.checkpoint or ()}
        if not checkpoints:
            for name, keywords in MODELS.items():
                out = Path(folder) / f"{len(checkpoints)}.safetensors"
                checkpoints[name] = charlm.train(TEXT, **keywords, max_time=arguments.train_seconds, quiet=True,
                                                 out=out).checkpoint
        print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
              f"{os.getloadavg()[0]:.2f}; torch {torch.__version__}, one thread; {arguments.length} characters "
              f"after {PREFIX!r}, best of {arguments.repeats}\n")
        print("| model | rows | charlm generate | ONNX Runtime |\n|---|---|---|---|")
        for source, checkpoint in checkpoints.items():
            name = f"{source}: {charlm.load(checkpoint).model.describe()}"
            exported = Path(folder) / f"{Path(checkpoint).stem}.onnx"
            export_onnx(checkpoint, exported)
            for rows in (1, 32):
                ours = charlm_rate(Path(checkpoint), rows, arguments.length, arguments.repeats)
                theirs = onnx_rate(exported, rows, arguments.length, arguments.repeats)
                print(f"| {name} | {rows} | {ours:,.0f} chars/s | {theirs:,.0f} chars/s |", flush=True)


if __name__ == "__main__":
    main()
