"""Memory and time of reading and tokenizing a big corpus with `charlm.data.loading.load_corpus`.

Writes a UTF-8 corpus of mixed scripts (English-like ASCII words, accented Latin, Cyrillic, CJK,
emoji; word frequencies Zipf-like) to a scratch folder outside the repository, then tokenizes its
first 100 MB and all of it (200 MB), by characters and by words with a vocab cap, each in a fresh
subprocess that reports

  peak memory   above the process's own baseline (Python + torch + charlm imported): the peak
                resident size (VmHWM, reset through /proc/self/clear_refs) minus the resident size
                before, in bytes per character of the corpus;
  seconds       for the cold run (count pass, encode pass, cache written): wall clock, and the
                CPU time of the process (the fairer figure on a shared machine); and for the
                second run, which finds the ids in the token cache (hashing the file to be sure).

The targets: at most 3 bytes per character above the baseline, and 100 MB in at most 30 s.

With `--many-files N` it measures a folder instead: the first `--size-mb` of the corpus cut at line
ends into N files (100 per subfolder), read as `charlm train FOLDER` reads it (found, hashed and
checked to be text, then counted and encoded), against one file holding the same text, the files
joined by the blank line charlm puts between documents: the same tokens either way.

    python scripts/bench_corpus.py [--size-mb 200] [--scratch /tmp/charlm-bench] [--max-vocab 50000]
    python scripts/bench_corpus.py --many-files 10000 --size-mb 50
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000


# ---------------------------------------------------------------------------------------------
# The corpus


def vocabulary(rnd: random.Random) -> list[str]:
    """About 100k distinct words in five scripts, shuffled so that every script has common words."""
    def word(letters: str, low: int, high: int) -> str:
        return "".join(rnd.choices(letters, k=rnd.randint(low, high)))

    ascii_letters = "abcdefghijklmnopqrstuvwxyz" * 3 + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    latin = "abcdefghijklmnopqrstuvwxyz" + "éèêàâçîïôûùüœæñßäö"
    cyrillic = "".join(chr(code) for code in range(0x430, 0x450))
    cjk = [chr(0x4E00 + rnd.randrange(20_000)) for _ in range(3_000)]
    emoji = [chr(0x1F300 + index) for index in range(200)]
    words = {word(ascii_letters, 1, 10) for _ in range(60_000)}
    words |= {word(latin, 2, 10) for _ in range(20_000)}
    words |= {word(cyrillic, 2, 10) for _ in range(8_000)}
    words |= {word(cjk, 1, 3) for _ in range(15_000)}
    words |= set(emoji)
    words = sorted(words)
    rnd.shuffle(words)
    return words


def write_corpus(path: Path, size_bytes: int, seed: int = 0) -> None:
    """`size_bytes` of lines of Zipf-distributed words, written in blocks (never all in memory)."""
    rnd = random.Random(seed)
    words = vocabulary(rnd)
    weights = [1 / (rank + 1) for rank in range(len(words))]
    cumulative = []
    total = 0.0
    for weight in weights:
        total += weight
        cumulative.append(total)
    drawn = rnd.choices(words, cum_weights=cumulative, k=3_000_000)
    pool, at = [], 0
    while at < len(drawn):  # 200k distinct lines of 5-25 words
        length = rnd.randint(5, 25)
        line = " ".join(drawn[at : at + length])
        pool.append(line + rnd.choice([".", ",", "!", "?", ".", "."]) + "\n")
        at += length
    written = 0
    with open(path, "w", encoding="utf-8") as file:
        while written < size_bytes:
            block = "".join(rnd.choices(pool, k=20_000)).encode("utf-8")
            block = block[: size_bytes - written]
            block = block[: block.rfind(b"\n") + 1] or block  # whole lines, so whole characters
            file.write(block.decode("utf-8"))
            written += len(block)
            if len(block) < 1000:
                break


def prepare(scratch: Path, size_mb: int) -> dict[str, Path]:
    """The full corpus and its first 100 MB (cut at a line end), generated once and kept."""
    scratch.mkdir(parents=True, exist_ok=True)
    full, half = scratch / f"corpus-{size_mb}mb.txt", scratch / "corpus-100mb.txt"
    if not full.exists() or full.stat().st_size < size_mb * MB * 0.99:
        started = time.perf_counter()
        write_corpus(full, size_mb * MB)
        print(f"wrote {full} ({full.stat().st_size / MB:.0f} MB) in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if not half.exists():
        with open(full, "rb") as source, open(half, "wb") as target:
            data = source.read(100 * MB)
            target.write(data[: data.rfind(b"\n") + 1])
    return {"100 MB": half, f"{size_mb} MB": full}


def prepare_many(scratch: Path, size_mb: int, count: int) -> dict[str, Path]:
    """`count` files holding the first `size_mb` of the corpus, and one file of the same text."""
    source = prepare(scratch, max(size_mb, 100))["100 MB" if size_mb <= 100 else f"{size_mb} MB"]
    folder, joined = scratch / f"many-{size_mb}mb-{count}", scratch / f"many-{size_mb}mb-{count}.txt"
    if not joined.exists() or sum(1 for _ in folder.rglob("*.txt")) != count:
        shutil.rmtree(folder, ignore_errors=True)
        with open(source, "rb") as file:
            data = file.read(size_mb * MB)
        lines = data[: data.rfind(b"\n") + 1].decode("utf-8").splitlines(keepends=True)
        parts = ["".join(lines[len(lines) * index // count : len(lines) * (index + 1) // count]) for index in range(count)]
        for index, part in enumerate(parts):
            path = folder / f"d{index // 100:03d}" / f"f{index:05d}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(part, encoding="utf-8")
        joined.write_text("\n\n".join(parts), encoding="utf-8")
    return {f"{count:,} files": folder, "one file": joined}


# ---------------------------------------------------------------------------------------------
# One measurement, in a fresh process


def memory_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(path: str, tokens: str, max_vocab: int | None, cache_dir: str) -> None:
    """Tokenize once and print a JSON line: seconds, peak bytes above baseline, counts."""
    sys.path.insert(0, str(ROOT))
    import torch  # noqa: F401  (part of the baseline)

    from charlm.text.corpus import find_corpus
    from charlm.data.loading import load_corpus

    with open("/proc/self/clear_refs", "w") as clear:  # reset VmHWM to the current size
        clear.write("5")
    baseline = memory_kb("VmRSS")
    started, cpu_started = time.perf_counter(), time.process_time()
    corpus = load_corpus(find_corpus([path]), tokens, max_vocab=max_vocab, cache_dir=cache_dir)
    int(corpus.ids.max())  # touch every id (a cache hit is memory-mapped), allocating nothing
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    peak = memory_kb("VmHWM")
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_bytes": (peak - baseline) * 1024, "baseline_bytes": baseline * 1024,
                      "tokens": len(corpus.ids), "vocab": len(corpus.vocab), "dtype": str(corpus.ids.dtype)}))


def measure(path: Path, tokens: str, max_vocab: int | None, cache_dir: Path) -> dict:
    command = [sys.executable, __file__, "--child", str(path), tokens, str(max_vocab or 0), str(cache_dir)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/charlm-bench"))
    parser.add_argument("--max-vocab", type=int, default=50_000)
    parser.add_argument("--many-files", type=int, default=None, metavar="N",
                        help="measure N files of --size-mb in all against one file of the same text")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, tokens, max_vocab, cache_dir = args.child
        child(path, tokens, int(max_vocab) or None, cache_dir)
        return

    if args.many_files:
        corpora = prepare_many(args.scratch, args.size_mb, args.many_files)
    else:
        corpora = prepare(args.scratch, args.size_mb)
    characters = {}
    header = (f"{'corpus, tokens':<34} {'tokens':>12} {'vocab':>7} {'ids':>6} {'cold s':>7} {'cpu s':>6} {'MB/s':>6} "
              f"{'peak B/char':>11} {'cached s':>8} {'peak B/char':>11}")
    print(header)
    print("-" * len(header))
    for tokens, max_vocab in (("char", None), ("word", args.max_vocab)):
        for name, path in corpora.items():
            cache_dir = args.scratch / "cache"
            shutil.rmtree(cache_dir, ignore_errors=True)
            cold = measure(path, tokens, max_vocab, cache_dir)
            warm = measure(path, tokens, max_vocab, cache_dir)
            if tokens == "char":
                characters[name] = cold["tokens"]
            warm_cpu = f" (CPU {warm['cpu_seconds']:.2f} s)" if args.many_files else ""
            label = f"{name} {tokens}" + (f" --max-vocab {max_vocab}" if max_vocab else "")
            per_char = characters[name]
            size = sum(file.stat().st_size for file in path.rglob("*")) if path.is_dir() else path.stat().st_size
            print(f"{label:<34} {cold['tokens']:>12,} {cold['vocab']:>7,} {cold['dtype'].split('.')[-1]:>6} "
                  f"{cold['seconds']:>7.1f} {cold['cpu_seconds']:>6.1f} {size / MB / cold['seconds']:>6.1f} "
                  f"{cold['peak_bytes'] / per_char:>11.2f} {warm['seconds']:>8.2f} {warm['peak_bytes'] / per_char:>11.2f}"
                  f"{warm_cpu}", flush=True)
    baseline = cold["baseline_bytes"] / MB
    print(f"\nbaseline (Python + torch + charlm) {baseline:.0f} MB; characters: "
          + ", ".join(f"{name} {count:,}" for name, count in characters.items()))
    shutil.rmtree(args.scratch / "cache", ignore_errors=True)


if __name__ == "__main__":
    main()
