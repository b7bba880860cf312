"""How `charlm serve` holds up under load: N streaming clients at once against the same N requests
one at a time, on loopback.

    python scripts/bench_serve.py                       # the newest language model in checkpoints/
    python scripts/bench_serve.py runs/x.safetensors --clients 24 --length 200
    python scripts/bench_serve.py --controls            # also through /v1/completions with the new controls

It starts `charlm serve` as its own process on a free loopback port, sends one request to warm it
up, then in each of --rounds rounds the requests one at a time, then all at once (each a stream:
`"stream": true`, its own seed), and prints, from the fastest round of each, requests/s and the
p50 / p95 times to the first byte of text and to the end, with the CPU and its load. With
--controls each round also sends the same requests through OpenAI's /v1/completions with
penalties, min-p, a stop text that never comes and log-probabilities in use, so that batching's
gain with them stands beside its gain without. Bounded: at
most 256 clients and 10 rounds, and every request gives up after --timeout seconds. A number here
is a measurement of this machine at this moment, not a test.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MAX_CLIENTS = 256
MAX_ROUNDS = 10


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def start_server(checkpoint: str, threads: int | None = None) -> tuple[subprocess.Popen, str, int]:
    """`charlm serve CHECKPOINT --port 0`, and the host and port it says it serves on."""
    server = subprocess.Popen([sys.executable, "-m", "charlm", "serve", checkpoint, "--port", "0",
                               *(["--threads", str(threads)] if threads else [])],
                              stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in server.stderr:
        found = re.search(r"at http://([\d.]+):(\d+)/", line)
        if found:
            threading.Thread(target=server.stderr.read, daemon=True).start()  # keep its log flowing
            return server, found.group(1), int(found.group(2))
    raise SystemExit(f"charlm serve did not start (exit code {server.wait()})")


CONTROLS = {"presence_penalty": 0.5, "frequency_penalty": 0.3, "repetition_penalty": 1.1, "min_p": 0.02,
            "stop": ["\x00never"], "logprobs": 2}  # a stop that never comes: every request makes all its tokens


def openai_body(body: dict) -> dict:
    """`body` (of /v1/generate) as a /v1/completions request with the controls in use."""
    return {"prompt": body["prefix"], "max_tokens": body["length"], "seed": body["seed"], "stream": True, **CONTROLS}


def stream(host: str, port: int, body: dict, timeout: float) -> dict:
    """One streaming request (to /v1/completions if it has a prompt, else /v1/generate): its
    status, and seconds to the first event of text and to the end."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    path, end = ("/v1/completions", b"data: [DONE]") if "prompt" in body else ("/v1/generate", b"event: done")
    try:
        connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        first = None
        if response.status == 200:
            for line in response:
                if first is None and line.startswith(b"data: "):
                    first = time.perf_counter() - started
                if line.startswith(end):
                    break
        else:
            response.read()
        return {"status": response.status, "first": first, "end": time.perf_counter() - started}
    except OSError as error:
        return {"status": f"failed: {error}", "first": None, "end": time.perf_counter() - started}
    finally:
        connection.close()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def report(label: str, results: list[dict], seconds: float) -> None:
    ok = [result for result in results if result["status"] == 200]
    bad = [result["status"] for result in results if result["status"] != 200]
    firsts = [result["first"] for result in ok if result["first"] is not None]
    ends = [result["end"] for result in ok]
    print(f"{label:<23} {len(results)} requests in {seconds:6.2f} s = {len(ok) / seconds:6.1f} req/s   "
          f"first byte p50 {percentile(firsts, 0.5) * 1000:6.0f} ms p95 {percentile(firsts, 0.95) * 1000:6.0f} ms   "
          f"end p50 {percentile(ends, 0.5) * 1000:6.0f} ms p95 {percentile(ends, 0.95) * 1000:6.0f} ms"
          + (f"   NOT OK: {bad}" if bad else ""))


def one_at_a_time(host: str, port: int, bodies: list[dict], timeout: float) -> list[dict]:
    return [stream(host, port, body, timeout) for body in bodies]


def all_at_once(host: str, port: int, bodies: list[dict], timeout: float) -> list[dict]:
    results: list[dict] = [{}] * len(bodies)

    def run(index: int) -> None:
        results[index] = stream(host, port, bodies[index], timeout)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def tiny_checkpoint(folder: str) -> str:
    """A small model trained for the bench where none was given or found."""
    import charlm

    corpus = Path(__file__).resolve().parent.parent / "corpora" / "timemachine.txt"
    print("no checkpoint given or in checkpoints/: training a small one for 200 steps", file=sys.stderr)
    run = charlm.train(corpus, hidden_size=128, num_layers=1, max_steps=200, quiet=True,
                       out=os.path.join(folder, "bench.safetensors"))
    return str(run.checkpoint)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", help="a language model [default: the newest in checkpoints/]")
    parser.add_argument("--clients", type=int, default=24, help=f"requests at once (at most {MAX_CLIENTS})")
    parser.add_argument("--length", type=int, default=200, help="tokens per request")
    parser.add_argument("--prefix", default="the ")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a request gives up")
    parser.add_argument("--threads", type=int, help="charlm serve --threads [default: its own, the cores free]")
    parser.add_argument("--rounds", type=int, default=3, help=f"rounds of both; the best counts (at most {MAX_ROUNDS})")
    parser.add_argument("--controls", action="store_true", help="also through /v1/completions with penalties, "
                        "min-p, a stop text and log-probabilities")
    options = parser.parse_args()
    clients = max(1, min(options.clients, MAX_CLIENTS))
    rounds = max(1, min(options.rounds, MAX_ROUNDS))

    from charlm.checkpoints.loading import latest
    from charlm.presets import CHECKPOINT_DIR

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = options.checkpoint or latest(CHECKPOINT_DIR, "lm") or tiny_checkpoint(folder)
        server, host, port = start_server(checkpoint, options.threads)
        try:
            bodies = [{"prefix": options.prefix, "length": options.length, "seed": seed, "stream": True}
                      for seed in range(clients)]
            stream(host, port, bodies[0], options.timeout)  # warm up
            print(f"{checkpoint}: {clients} streaming requests of {options.length} tokens, on {cpu_name()} "
                  f"({os.cpu_count()} logical CPUs), load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
                  f"best of {rounds} rounds; charlm serve {f'--threads {options.threads}' if options.threads else '(its threads)'}")
            best: dict[str, tuple[list[dict], float]] = {}
            failures = 0
            kinds = [("", bodies)] + ([(" controls", [openai_body(body) for body in bodies])] if options.controls else [])
            for _ in range(rounds):  # each round times every side, so load from elsewhere hits them alike
                for (kind, asked), (label, run) in [(kind, side) for kind in kinds for side in (
                        ("one at a time", one_at_a_time), (f"{clients} at once", all_at_once))]:
                    label += kind
                    started = time.perf_counter()
                    results = run(host, port, asked, options.timeout)
                    seconds = time.perf_counter() - started
                    failures += sum(1 for result in results if result["status"] != 200)
                    if label not in best or seconds < best[label][1]:
                        best[label] = (results, seconds)
            for label, (results, seconds) in best.items():
                report(label, results, seconds)
            for kind, _ in kinds:
                alone, (_, together) = best["one at a time" + kind][0], best[f"{clients} at once" + kind]
                one = percentile([result["end"] for result in alone if result["status"] == 200], 0.5)
                print(f"{clients} at once{kind} took {together / one:.1f}x the time of one request (one at a time: "
                      f"{clients}x)")
            print(f"{failures} failed requests (5xx or other) in all rounds; load average after: "
                  f"{os.getloadavg()[0]:.2f}")
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
