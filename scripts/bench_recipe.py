"""The recipe against fixed defaults, at equal time, on texts of about 5 KB, 50 KB, 170 KB, 1 MB and 10 MB.

For each text, `charlm train TEXT --max-time T` runs once with this checkout and once with another
(`--baseline`, a checkout of charlm from before the recipe: its fixed defaults), one after the other
on the same machine; both kept models are then scored by this checkout on the whole held-out split
of their run (`TextModel.evaluate(held_out=True)`: both runs split the text alike), beside a table
of the training split's character frequencies (a unigram model, add-one smoothed) scored on the
same split. The small texts are the kind users bring: several files in several languages.

    apt-get install fortunes-ru manpages-zh        # the Russian and Chinese text of the small corpora
    git worktree add /tmp/before <commit before the recipe>
    python scripts/bench_recipe.py --baseline /tmp/before --work /tmp/recipe-bench
    python scripts/bench_recipe.py --baseline /tmp/before --sizes 5k,50k --time 60   # the small ones

Texts: English from /usr/share/common-licenses, Russian from fortunes-ru, Chinese from manpages-zh
(troff markup stripped), one file each, cut to a third of the size; 170k is The Time Machine and 1m
tiny-shakespeare (../shared/corpora); 10m is a folder of all of these, whole. Prints a Markdown
table with the CPU and the load average before each run.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPORA = ROOT.parent / "shared" / "corpora"
SIZES = {"5k": 5_000, "50k": 50_000, "170k": None, "1m": None, "10m": None}
TIMES = {"5k": 60, "50k": 60, "170k": 150, "1m": 120, "10m": 120}


def russian() -> str:
    files = sorted(glob.glob("/usr/share/games/fortunes/ru/*.u8"))
    if not files:
        sys.exit("no Russian text: apt-get install fortunes-ru")
    return "\n".join(Path(file).read_text(encoding="utf-8", errors="replace") for file in files)


def chinese() -> str:
    files = sorted(glob.glob("/usr/share/man/zh_CN/man*/*.gz"))
    if not files:
        sys.exit("no Chinese text: apt-get install manpages-zh")
    pages = []
    for file in files:
        text = gzip.open(file).read().decode("utf-8", "replace")
        lines = [re.sub(r"\\f[BIRP]|\\f\(..|\\[,/&]", "", line).replace("\\-", "-")
                 for line in text.splitlines() if not line.startswith((".", "'"))]
        pages.append("\n".join(line for line in lines if line.strip()))
    return "\n".join(pages)


def english() -> str:
    files = sorted(file for file in glob.glob("/usr/share/common-licenses/*") if os.path.isfile(file))
    return "\n".join(Path(file).read_text(encoding="utf-8", errors="replace") for file in files)


def make_corpus(size: str, work: Path) -> Path:
    """The text of `size`: a file, or a folder of one file per language."""
    if size == "170k":
        return CORPORA / "timemachine.txt"
    if size == "1m":
        return CORPORA / "tinyshakespeare.txt"
    folder = work / f"text-{size}"
    if folder.exists():
        return folder
    folder.mkdir(parents=True)
    languages = {"en": english(), "ru": russian(), "zh": chinese()}
    for name, text in languages.items():
        if SIZES[size] is None:  # all of it
            (folder / f"{name}.txt").write_text(text, encoding="utf-8")
            continue
        part = text[len(text) // 7:].encode()[: SIZES[size] // 3].decode("utf-8", "ignore")  # not the very start
        (folder / f"{name}.txt").write_text(part[: part.rfind("\n") + 1], encoding="utf-8")
    if SIZES[size] is None:
        for name in ("timemachine.txt", "tinyshakespeare.txt"):
            shutil.copy(CORPORA / name, folder / name)
    return folder


def train(checkout: Path, corpus: Path, out: Path, seconds: float, extra: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "charlm", "train", str(corpus), "--max-time", str(seconds), "--quiet",
                    "--out", str(out), "--overwrite", *extra], env=env, check=True, cwd=out.parent)
    return time.perf_counter() - started


def unigram(corpus: Path) -> float:
    """Held-out loss of the training split's token frequencies (add-one), split as a run splits."""
    import torch

    from charlm.data.loading import load_corpus
    from charlm.text.corpus import find_corpus

    data = load_corpus(find_corpus((corpus,)))
    train_ids, val_ids = data.split(0.1)
    counts = torch.bincount(train_ids.long(), minlength=len(data.vocab)).double() + 1
    return float(-(counts.log() - counts.sum().log())[val_ids[1:].long()].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of charlm with fixed defaults")
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--time", type=float, help="seconds for every size [default: per size]")
    parser.add_argument("--work", type=Path, default=Path("/tmp/charlm-bench-recipe"))
    parser.add_argument("--extra", default="", help="more flags for both runs")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import charlm

    args.work.mkdir(parents=True, exist_ok=True)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"CPU: {cpu}, {os.cpu_count()} cores\n")
    print("| text | files | KB | tokens | time | unigram ppl | fixed defaults ppl | recipe ppl | recipe | load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        corpus = make_corpus(size, args.work)
        files = sorted(corpus.rglob("*.txt")) if corpus.is_dir() else [corpus]
        kilobytes = sum(file.stat().st_size for file in files) / 1000
        seconds = args.time or TIMES[size]
        scores, loads = {}, []
        for name, checkout in (("before", args.baseline), ("recipe", ROOT)):
            loads.append(os.getloadavg()[0])
            out = args.work / f"{name}-{size}.safetensors"
            train(checkout, corpus, out, seconds, args.extra.split())
            model = charlm.load(out)
            scores[name] = model.evaluate(corpus, held_out=True)
        chosen = json.dumps({key: value for key, value in charlm.load(args.work / f"recipe-{size}.safetensors")
                             .meta.model.items() if key in ("hidden_size", "num_layers", "dropout", "weight_drop")})
        print(f"| {size} | {len(files)} | {kilobytes:,.0f} | {scores['recipe']['tokens']:,} | {seconds:g} s | "
              f"{math.exp(unigram(corpus)):.2f} | {scores['before']['ppl']:.2f} | {scores['recipe']['ppl']:.2f} | "
              f"{chosen} | {' / '.join(f'{load:.2f}' for load in loads)} |", flush=True)


if __name__ == "__main__":
    main()
