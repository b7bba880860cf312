"""charlm's default training against the plain `nn.LSTM` loop, on a quiet machine and beside a busy one.

    python scripts/bench_busy.py                    # quiet, then beside one process that keeps a core busy
    python scripts/bench_busy.py --busy 0,1,2 --seconds 40

For each condition (0, 1, ... busy processes: each a `python -c "while True: pass"` started first and
killed after), one after the other on the same machine:
  - the plain loop as the lessons write it: embedding 64, `nn.LSTM(64, 512, 2)`, a linear head, AdamW
    3e-3, clip 1, batch 32 x 35 of The Time Machine (d2l), the state carried; at 1 thread and at 2;
  - `charlm train corpora/timemachine.txt --preprocess d2l` with its defaults, for as long, its
    tokens/s read from its metrics (tokens so far over its time so far: set-up, measuring and
    evaluations included, as the user sees it).
Each runs in a process of its own, for --seconds after a short warm-up. Prints a Markdown table with
the CPU and the load average (1 minute) before each measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = ROOT / "corpora" / "timemachine.txt"
BUSY = "while True: pass"


def plain_loop(threads: int, seconds: float) -> float:
    """Tokens/s of the lessons' loop over `seconds`, after 3 untimed steps."""
    import torch
    from torch import nn

    sys.path.insert(0, str(ROOT))
    from charlm.data.loading import load_corpus

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    data = load_corpus(TEXT, preprocess="d2l")
    ids = data.ids.long()
    batch, steps, vocab = 32, 35, len(data.vocab)
    rows = ids[: len(ids) // batch * batch].view(batch, -1)
    embedding, lstm, head = nn.Embedding(vocab, 64), nn.LSTM(64, 512, 2, batch_first=True), nn.Linear(512, vocab)
    parameters = [*embedding.parameters(), *lstm.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=3e-3)
    state, position, tokens, started = None, 0, 0, None
    for step in range(10**9):
        if position + steps + 1 > rows.shape[1]:
            position, state = 0, None
        inputs, targets = rows[:, position : position + steps], rows[:, position + 1 : position + steps + 1]
        position += steps
        output, state = lstm(embedding(inputs), state)
        state = tuple(part.detach() for part in state)
        loss = nn.functional.cross_entropy(head(output).reshape(-1, vocab), targets.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        if step == 2:
            started = time.perf_counter()
        elif started is not None:
            tokens += batch * steps
            if time.perf_counter() - started >= seconds:
                return tokens / (time.perf_counter() - started)
    raise AssertionError


def charlm_default(seconds: float) -> float:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "m.safetensors"
        subprocess.run([sys.executable, "-m", "charlm", "train", str(TEXT), "--preprocess", "d2l", "--max-time",
                        str(seconds), "--ensemble", "1", "--quiet", "--out", str(out), "--cache-dir", folder], check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        records = [json.loads(line) for line in (Path(folder) / "m.metrics.jsonl").read_text().splitlines()]
        return records[-1]["tokens_per_sec"]


def measure(kind: str, seconds: float, wait_policy: str | None = None) -> float:
    """One measurement in a fresh process (with OMP_WAIT_POLICY set, when given)."""
    env = {**os.environ, **({"OMP_WAIT_POLICY": wait_policy} if wait_policy else {})}
    done = subprocess.run([sys.executable, __file__, "--one", kind, "--seconds", str(seconds)], check=True,
                          capture_output=True, text=True, env=env)
    return float(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", default="0,1", help="busy processes beside, for each condition")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--wait-policy", help="OMP_WAIT_POLICY for every measurement (ACTIVE, PASSIVE)")
    parser.add_argument("--kinds", default="1,2,charlm", help="what to measure: threads of the plain loop, charlm")
    args = parser.parse_args()
    if args.one:
        rate = charlm_default(args.seconds) if args.one == "charlm" else plain_loop(int(args.one), args.seconds)
        print(rate)
        return
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"CPU: {cpu}, {os.cpu_count()} cores; {args.seconds:g} s each\n")
    print("| busy processes | plain loop, 1 thread | plain loop, 2 threads | charlm default | charlm / better plain "
          "| load (1 min) before each |")
    print("|---|---|---|---|---|---|")
    for busy in (int(count) for count in args.busy.split(",")):
        workers = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy)]
        try:
            time.sleep(5 if busy else 0)  # the load average catches up
            rates, loads = {}, []
            for kind in args.kinds.split(","):
                loads.append(os.getloadavg()[0])
                rates[kind] = measure(kind, args.seconds, args.wait_policy)
        finally:
            for worker in workers:
                worker.kill()
        shown = {kind: f"{rates[kind]:,.0f}" if kind in rates else "–" for kind in ("1", "2", "charlm")}
        better = max(rates.get("1", 0), rates.get("2", 0))
        ratio = f"{rates['charlm'] / better:.2f}" if "charlm" in rates and better else "–"
        print(f"| {busy} | {shown['1']} | {shown['2']} | {shown['charlm']} | {ratio} | "
              f"{' / '.join(f'{load:.2f}' for load in loads)} |", flush=True)
        time.sleep(20 if busy else 0)  # let the load fall before the next condition


if __name__ == "__main__":
    main()
