"""RNN, GRU, LSTM and the transformer on the bundled corpora at equal CPU time: the README's table.

    python scripts/compare_models.py                      # 60 s each, 1 thread: about 10 minutes
    python scripts/compare_models.py --max-time 30 --threads 2
    python scripts/compare_models.py --models lstm transformer --optimizers adamw muon --corpora tinyshakespeare

Each model is `charlm train CORPUS --model M --max-time T --threads N --ensemble 1` (one model: the
recipe's --ensemble 2 is a choice of how many, not of which) with charlm's defaults for
that model (the transformer's own, see `charlm.presets.ARCHITECTURE_DEFAULTS`), run one after
another in this process; the table gives the best held-out loss (nats per character over the
whole held-out split, the last 10 %), the training tokens/s over the run and the parameters, as
markdown, with the CPU, threads and load it ran under.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CORPORA = {"timemachine": ("timemachine (d2l)", "corpora/timemachine.txt", ["--preprocess", "d2l"]),
           "tinyshakespeare": ("tinyshakespeare", "corpora/tinyshakespeare.txt", [])}
MODELS = ("rnn", "gru", "lstm", "transformer")


def train(corpus: str, flags: list[str], model: str, seconds: float, threads: int, precision: str,
          folder: str, optimizer: str | None = None) -> dict:
    """One run; its summary: best held-out loss, tokens/s, steps, parameters."""
    from click.testing import CliRunner

    from charlm.checkpoints.loading import load_model
    from charlm.cli import cli

    out = os.path.join(folder, f"{model}-{optimizer}-{Path(corpus).stem}.safetensors")
    arguments = ["train", str(ROOT / corpus), *flags, "--model", model, "--max-time", str(seconds), "--threads",
                 str(threads), "--precision", precision, "--no-cache", "--quiet", "--out", out, "--ensemble", "1",
                 *(["--optimizer", optimizer] if optimizer else [])]
    result = CliRunner().invoke(cli, arguments, catch_exceptions=False)
    if result.exit_code != 0:
        raise SystemExit(f"charlm {' '.join(arguments)} failed:\n{result.output}")
    last = json.loads(Path(out[: -len(".safetensors")] + ".metrics.jsonl").read_text().splitlines()[-1])
    loaded, meta, _ = load_model(out, "lm")
    return {"loss": meta["training"]["best_val_loss"], "tokens_per_sec": last["tokens_per_sec"],
            "steps": last["step"], "parameters": loaded.num_parameters(),
            "model": loaded.describe() + (f" + {optimizer}" if optimizer else "")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-time", type=float, default=60.0, help="seconds of training per model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="fp32", help="fp32 compares the models, not the kernels")
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--optimizers", nargs="*", default=[None], help="each model with each (default: its own)")
    parser.add_argument("--corpora", nargs="*", default=list(CORPORA), choices=list(CORPORA))
    args = parser.parse_args()
    from charlm.runtime.measured import cpu_name

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for corpus_name in args.corpora:
            corpus_name, corpus, flags = CORPORA[corpus_name]
            for model, optimizer in ((model, optimizer) for model in args.models for optimizer in args.optimizers):
                before = os.getloadavg()[0]
                run = train(corpus, flags, model, args.max_time, args.threads, args.precision, folder, optimizer)
                rows.append((corpus_name, run, before, os.getloadavg()[0]))
                print(f"{corpus_name}: {run['model']}: loss {run['loss']:.4f}", file=sys.stderr, flush=True)
    print(f"`python scripts/compare_models.py {' '.join(sys.argv[1:])}`: "
          f"{args.max_time:g} s of training each, {args.threads} thread(s), {args.precision}, CPU {cpu_name()}, "
          f"load average {min(row[2] for row in rows):.1f}-{max(row[3] for row in rows):.1f} "
          f"on {os.cpu_count()} cores\n")
    print("| corpus | model | held-out loss | perplexity | tokens/s | steps | parameters |")
    print("|---|---|---|---|---|---|---|")
    for corpus_name, run, _, _ in rows:
        print(f"| {corpus_name} | {run['model']} | {run['loss']:.3f} | {math.exp(run['loss']):.2f} | "
              f"{run['tokens_per_sec']:,.0f} | {run['steps']:,} | {run['parameters']:,} |")


if __name__ == "__main__":
    main()
