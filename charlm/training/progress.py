"""Training progress where it runs, and the one home of tqdm's bar: in a Jupyter notebook its own
bar, on a terminal tqdm's on stderr, elsewhere (a log file, a pipe) a plain line every
LINE_SECONDS. It knows nothing about what is trained.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from tqdm import tqdm


LINE_SECONDS = 30.0  # between progress lines when stderr is not a terminal


def show_evaluation(record: dict[str, Any], sample: str | None = None, note: str | None = None) -> None:
    """An evaluation's line (a metrics record's step, epoch, losses and speed), then the `sample` of
    what the model writes now, quoted as JSON on one line, and a `note`, on stderr past the bar."""
    val_loss, train_loss = record["val_loss"], record["train_loss"]
    shown = f"val loss {val_loss:.4f}, ppl {record['val_ppl']:.2f}" if val_loss is not None else "no validation split"
    tqdm.write(file=sys.stderr, s=f"step {record['step']}  epoch {record['epoch']:.2f}  train loss "
               f"{train_loss if train_loss is None else round(train_loss, 4)}  {shown}  "
               f"{record['tokens_per_sec']:,.0f} tok/s")
    for line in (f"  sample: {json.dumps(sample, ensure_ascii=False)}" if sample is not None else None, note):
        if line:
            tqdm.write(file=sys.stderr, s=line)


def tokens_per_second(tokens: int, elapsed: float) -> float:
    """The one training speed charlm shows (the bar, the progress lines, the evaluation lines and
    the metrics file): the tokens trained on so far over the run's time so far, evaluations in."""
    return tokens / max(elapsed, 1e-9)


class Progress:
    """Training progress where it runs: in a Jupyter notebook its own bar (`tqdm.auto`'s); on a
    terminal tqdm's bar on stderr; elsewhere (a log file, a pipe) a plain line on stderr every
    LINE_SECONDS, so that a long run's log holds lines, not carriage returns; nothing when not
    `enabled`."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.enabled, self.total = enabled, total
        notebook = enabled and in_notebook()
        self.lines = enabled and not notebook and not sys.stderr.isatty()
        if notebook:
            from tqdm.auto import tqdm as notebook_tqdm

            self.bar = notebook_tqdm(total=total, initial=initial, unit="step", leave=False)
        else:
            self.bar = tqdm(total=total, initial=initial, disable=not enabled or self.lines, unit="step",
                            dynamic_ncols=True, leave=False, file=sys.stderr)
        self.last_line = time.perf_counter()

    def update(self, step: int, loss: float, tokens_per_second: float, lr: float, elapsed: float,
               total: int | None = None) -> None:
        """The run is at `step`; `total`, when given, is the steps it now plans (--max-time's)."""
        if total and total != self.total:
            self.total = self.bar.total = total
        if self.lines and time.perf_counter() - self.last_line >= LINE_SECONDS:
            print(f"step {step}/{self.total}  loss {loss:.3f}  lr {lr:.3g}  {tokens_per_second:,.0f} tok/s  "
                  f"{elapsed:.0f} s", file=sys.stderr, flush=True)
            self.last_line = time.perf_counter()
        elif not self.lines:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_second:,.0f}")

    def close(self) -> None:
        self.bar.close()


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel, asked as `tqdm.auto` asks: IPython is imported and its
    shell is an IPKernelApp's (a terminal's IPython is not)."""
    ipython = sys.modules.get("IPython")
    try:
        shell = ipython.get_ipython() if ipython is not None else None
        return shell is not None and "IPKernelApp" in shell.config
    except (AttributeError, TypeError):
        return False
