"""Generation in fp32 and in bf16, side by side: chars/s of `charlm generate`'s sampling at several
--num-samples, the next-token divergence of bf16 from fp32 along the same tokens, and what
`--precision auto` takes here for each.

    python scripts/bench_generate.py checkpoints/timemachine.safetensors [--threads N] [--rows 1 4 32] [--device cuda]
    python scripts/bench_generate.py CHECKPOINT --threads 1 2 --rows 1 2 4 8 16 32   # at 1 thread, then at 2

Each round times fp32 then bf16 on the same seeded work and the best of the rounds counts, so load
from other processes hits both sides of a ratio alike. "auto" measures afresh (nothing kept).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from charlm.checkpoints.loading import load_model  # noqa: E402
from charlm.generation.request import Sampling
from charlm.generation.sampling import generate, special_ids, start_ids  # noqa: E402
from charlm.runtime.measured import Decisions, _probe, bf16_capable, choose_generation_precision, cpu_name  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--threads", type=int, nargs="*", default=[None],
                        help="torch's CPU threads, a table for each [default: torch's]")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 8, 32], help="--num-samples to measure at")
    parser.add_argument("--length", type=int, default=200, help="characters per sample")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (generate's ids come back to the CPU: synchronised)")
    args = parser.parse_args()
    device = torch.device(args.device)
    model, _, vocab = load_model(str(args.checkpoint), "lm", device)
    banned, prefix = special_ids(vocab), start_ids(vocab)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"{where} (CPU bf16 matrix instructions: {'yes' if bf16_capable() else 'no'}), "
          f"torch {torch.__version__}, {model.describe()}")
    print(f"{'threads':>8}{'rows':>5}{'fp32 chars/s':>14}{'bf16 chars/s':>14}{'bf16/fp32':>11}{'KL nats':>10}{'auto':>6}")
    for threads in args.threads:
        if threads:
            torch.set_num_threads(threads)
        for rows in args.rows:
            best = {"fp32": 0.0, "bf16": 0.0}
            for _ in range(args.rounds):
                for precision in best:
                    started = time.perf_counter()
                    generate(model, prefix, args.length, Sampling(), rows, seed=0, banned=banned, precision=precision)
                    best[precision] = max(best[precision], rows * args.length / (time.perf_counter() - started))
            with torch.inference_mode():
                _, divergence = _probe(model, rows, device)
            auto, _ = choose_generation_precision(model, rows, Decisions(None))
            print(f"{torch.get_num_threads():>8}{rows:>5}{best['fp32']:>14,.0f}{best['bf16']:>14,.0f}"
                  f"{best['bf16'] / best['fp32']:>10.2f}x{divergence:>10.5f}{auto:>6}", flush=True)


if __name__ == "__main__":
    main()
