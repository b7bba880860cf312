"""minGRU and minLSTM training tokens/s: charlm's step against the plain forms, side by side in one run.

    python scripts/bench_minrnn.py --threads 2            # the defaults' shapes (3 x 192, context 128, batch 32)
    python scripts/bench_minrnn.py --json out.json

For each cell, at charlm's defaults (`charlm.presets.ARCHITECTURE_DEFAULTS`), the same model and batch:
  charlm      the trainer's step (`Trainer._train_step`: AdamW, clipping): on a CPU position by position
              (`minrnn.sequential`), on a GPU the scan in chunks of `CHUNK`;
  chunked     a plain loop (forward, backward, AdamW) with each layer's recurrence by `minrnn.scan` in
              chunks of `CHUNK`, the form a GPU trains by;
  one scan    the same loop with the whole sequence in one log-space scan, as the reference code
              (lucidrains' minGRU-pytorch) runs it;
  sequential  the same loop with each layer run position by position (`minrnn.sequential`), as an RNN runs;
and each in bf16 autocast where the CPU has bf16 matrix instructions. Timings are the best of several
rounds, each round timing every form in turn (`bench.best_seconds`), so load hits them alike.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import best_seconds  # noqa: E402  (beside this script)
from charlm.models import minrnn  # noqa: E402
from charlm.presets import ARCHITECTURE_DEFAULTS  # noqa: E402
from charlm.runtime.measured import bf16_capable, cpu_name  # noqa: E402
from charlm.training.optimization import TrainConfig  # noqa: E402
from charlm.training.trainer import Trainer  # noqa: E402

VOCAB = 65  # tinyshakespeare's characters


class _Batches:
    """One fixed sequential batch, as the trainer asks for batches."""

    carries_state = True

    def __init__(self, batch_size: int, seq_len: int) -> None:
        data = torch.randint(VOCAB, (batch_size, seq_len + 1), generator=torch.Generator().manual_seed(0))
        self.batch = (data[:, :-1], data[:, 1:])

    def __len__(self) -> int:
        return 1_000

    def batches(self, epoch: int, start: int = 0):
        while True:
            yield self.batch


def plain_step(model: minrnn.MinRNN, batch, scan: Callable, precision: str) -> Callable[[], object]:
    """One step of a plain loop: forward (each layer's recurrence by `scan`, on a CPU or not), loss,
    backward, AdamW."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()

    def step() -> None:
        with mock.patch.object(minrnn, "scan", scan), mock.patch.object(minrnn, "sequential", scan), autocast:
            loss, count, _ = model.batch_loss(batch)
        (loss / count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def rates(cell: str, batch_size: int, repeats: int, precision: str) -> dict[str, float]:
    defaults = ARCHITECTURE_DEFAULTS[cell]
    seq_len = defaults["seq_len"]
    batches = _Batches(batch_size, seq_len)

    def model() -> minrnn.MinRNN:
        torch.manual_seed(0)
        return minrnn.MinRNN(minrnn.MinRNNConfig(VOCAB, cell, defaults["embedding_size"], defaults["hidden_size"],
                                                 defaults["num_layers"], 0.0)).train()

    train = TrainConfig(optimizer="adamw", lr=1e-3, warmup_steps=100, clip=1.0, batch_size=batch_size, seq_len=seq_len,
                        device="cpu", precision=precision)
    trainer = Trainer(model(), batches, None, train, "/tmp/charlm-bench-minrnn.safetensors", {}, progress=False)
    scan, sequential = minrnn.scan, minrnn.sequential  # bound now: the plain steps patch the module's names
    whole = lambda log_a, log_b, h0=None: scan(log_a, log_b, h0, chunk=log_a.shape[1])  # noqa: E731
    seconds = best_seconds({"charlm": (lambda: trainer._train_step(batches.batch), 3),
                            "chunked scan": (plain_step(model(), batches.batch, scan, precision), 3),
                            "one scan": (plain_step(model(), batches.batch, whole, precision), 3),
                            "sequential": (plain_step(model(), batches.batch, sequential, precision), 3)}, repeats)
    return {name: batch_size * seq_len / value for name, value in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; the best counts")
    parser.add_argument("--batch-size", type=int, default=ARCHITECTURE_DEFAULTS["mingru"]["batch_size"])
    parser.add_argument("--threads", type=int, help="torch's CPU threads [default: torch's]")
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = ("fp32", "bf16") if bf16_capable() else ("fp32",)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU {cpu_name()}; training tokens/s, "
          f"batch {args.batch_size}")
    print(f"{'model':<22}{'charlm':>10}{'chunked':>10}{'one scan':>10}{'sequential':>12}{'seq/chunked':>13}")
    results = []
    for cell in minrnn.MIN_CELLS:
        for precision in precisions:
            found = rates(cell, args.batch_size, args.repeats, precision)
            results.append({"cell": cell, "precision": precision, **found})
            print(f"{cell + ' ' + precision:<22}{found['charlm']:>10,.0f}{found['chunked scan']:>10,.0f}"
                  f"{found['one scan']:>10,.0f}{found['sequential']:>12,.0f}"
                  f"{found['sequential'] / found['chunked scan']:>12.2f}x", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                         "cpu": cpu_name(), "rows": results}, indent=2))


if __name__ == "__main__":
    main()
