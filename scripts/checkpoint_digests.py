"""The SHA-256 of the checkpoint and resume files that a fixed set of tiny seeded runs writes, one
run per model kind, to show that a change to the code leaves what it writes byte for byte the same.

    python scripts/checkpoint_digests.py > before.txt      # on the old code
    python scripts/checkpoint_digests.py > after.txt       # on the new code
    diff before.txt after.txt                              # empty: the same bytes

Each run is a real `charlm train` (in-process, on one CPU thread) in a fresh temporary folder, so
nothing but the code differs between two calls on the same machine.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TEXT = ("the time traveller for so it will be convenient to speak of him was expounding a recondite matter to us "
        "his grey eyes shone and twinkled and his usually pale face was flushed and animated\n") * 8
PAIRS = "".join(f"{word}\t{word[::-1]}\n" for word in ("man", "king", "girl", "boy", "queen", "women", "hello", "high",
                                                        "low", "sister", "brother", "uncle", "aunt", "father"))
TINY = ["--hidden-size", "16", "--num-layers", "2", "--embedding-size", "8", "--batch-size", "4", "--seq-len", "8",
        "--max-steps", "6", "--eval-every", "3", "--dropout", "0.2", "--quiet"]
PAIR_TINY = ["--hidden-size", "16", "--embedding-size", "8", "--batch-size", "4", "--epochs", "2", "--quiet"]

RUNS = {
    "lstm": ["text.txt", *TINY],
    "gru": ["text.txt", *TINY, "--model", "gru"],
    "rnn": ["text.txt", *TINY, "--model", "rnn"],
    "lstm-scratch": ["text.txt", *TINY, "--from-scratch"],
    "gru-one-hot": ["text.txt", *TINY, "--model", "gru", "--embedding-size", "0"],
    "rnn-random-sgd": ["text.txt", *TINY, "--model", "rnn", "--iterator", "random", "--optimizer", "sgd", "--lr", "0.5"],
    "lstm-words": ["text.txt", *TINY, "--tokens", "word"],
    "lstm-d2l-no-val": ["text.txt", *TINY, "--preprocess", "d2l", "--val-fraction", "0"],
    "transformer": ["text.txt", "--model", "transformer", "--num-layers", "2", "--num-heads", "2", "--embedding-size",
                    "16", "--batch-size", "4", "--seq-len", "8", "--max-steps", "6", "--eval-every", "3", "--quiet"],
    "seq2seq": ["pairs.tsv", *PAIR_TINY],
    "seq2seq-lstm-no-attention": ["pairs.tsv", *PAIR_TINY, "--model", "lstm", "--no-attention"],
    "tagger": ["pairs.tsv", *PAIR_TINY, "--model-type", "tagger", "--model", "rnn", "--embedding-size", "0"],
}


def resume_digest(path: str) -> str:
    """A resume state's bytes but for its wall-clock time ("elapsed"), which no two runs share: the
    header with that one number zeroed, then the tensor data as written."""
    import json
    import struct

    data = Path(path).read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + size])
    meta = json.loads(header["__metadata__"]["charlm"])
    meta["resume"]["elapsed"] = 0
    header["__metadata__"]["charlm"] = json.dumps(meta, sort_keys=True)
    return hashlib.sha256(json.dumps(header, sort_keys=True).encode() + data[8 + size :]).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="run only these kinds")
    args = parser.parse_args()
    import torch
    from click.testing import CliRunner

    from charlm.cli import cli

    torch.set_num_threads(1)
    for name, flags in RUNS.items():
        if args.only and name not in args.only:
            continue
        with tempfile.TemporaryDirectory() as folder:
            previous = os.getcwd()
            os.chdir(folder)
            try:
                Path("text.txt").write_text(TEXT, encoding="utf-8")
                Path("pairs.tsv").write_text(PAIRS, encoding="utf-8")
                result = CliRunner().invoke(cli, ["train", *flags, "--out", "run.safetensors", "--no-cache"]
                                            if flags[0] == "text.txt" else ["train", *flags, "--out", "run.safetensors"])
                if result.exit_code != 0:
                    raise SystemExit(f"{name}: charlm train failed:\n{result.output}")
                print(f"{name:28} {'run.safetensors':24} {hashlib.sha256(Path('run.safetensors').read_bytes()).hexdigest()}")
                print(f"{name:28} {'run.resume.safetensors':24} {resume_digest('run.resume.safetensors')}")
            finally:
                os.chdir(previous)


if __name__ == "__main__":
    main()
