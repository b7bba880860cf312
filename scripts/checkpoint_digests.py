"""The SHA-256 of the checkpoint and resume files that a fixed set of tiny seeded runs writes, one
run per model kind, and of what those models then make (seeded `charlm generate` text, one sample and
several; generations stepped together by the server's batcher; `charlm translate`'s outputs; a
fine-tune with --init-from), to show that a change to the code leaves it byte for byte the same.

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
    """A resume state's or checkpoint's bytes but for what no two runs share: its wall-clock time
    ("elapsed") zeroed, the temporary folder it ran in written as "<folder>" (a fine-tune records
    its parent's absolute path); then the tensor data as written."""
    import json
    import struct

    data = Path(path).read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + size])
    meta = json.loads(header["__metadata__"]["charlm"])
    if "resume" in meta:
        meta["resume"]["elapsed"] = 0
    text = json.dumps(meta, sort_keys=True).replace(json.dumps(os.getcwd())[1:-1], "<folder>")
    header["__metadata__"]["charlm"] = text
    return hashlib.sha256(json.dumps(header, sort_keys=True).encode() + data[8 + size :]).hexdigest()


GENERATE = {  # run -> `charlm generate` flags, each printed text's digest
    "lstm": [["--prefix", "the ", "--seed", "1"], ["--seed", "2", "--num-samples", "3", "--top-k", "5"],
             ["--prefix", "time", "--greedy", "--length", "40"]],
    "gru-one-hot": [["--prefix", "his ", "--seed", "3", "--temperature", "0.7", "--top-p", "0.9"]],
    "lstm-words": [["--prefix", "the time", "--seed", "4", "--length", "20"]],
    "transformer": [["--prefix", "the ", "--seed", "5", "--num-samples", "2"]],
}
# Requests stepped together by one batcher (the server's): (prefix, length, sampling, num_samples, seed).
BATCHED = [("the ", 30, {}, 1, 1), ("his ", 25, {"temperature": 0.8, "top_k": 4}, 2, 2),
           ("", 20, {"greedy": True}, 1, 3), ("was ", 35, {"top_p": 0.8}, 3, 4)]
TRANSLATE = ["man", "king", "girl", "unknown"]


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def outputs(name: str, invoke) -> None:
    """The digests of what the model at run.safetensors makes, for the run `name`."""
    for flags in GENERATE.get(name, ()):
        result = invoke(["generate", "--checkpoint", "run.safetensors", "--precision", "fp32", *flags])
        print(f"{name:28} {'generate ' + ' '.join(flags)[:40]:50} {digest(result.output)}")
    if name in ("lstm", "transformer"):
        print(f"{name:28} {'batcher':50} {digest(batched('run.safetensors'))}")
    if name.startswith(("seq2seq", "tagger")):
        result = invoke(["translate", "--checkpoint", "run.safetensors", "--unknown", "skip", *TRANSLATE])
        print(f"{name:28} {'translate':50} {digest(result.output)}")
        result = invoke(["translate", "--checkpoint", "run.safetensors", "--unknown", "skip", "--beam", "3", *TRANSLATE])
        print(f"{name:28} {'translate --beam 3':50} {digest(result.output)}")
    if name == "lstm":
        result = invoke(["train", "text.txt", "--init-from", "run.safetensors", "--out", "tuned.safetensors",
                         "--max-steps", "4", "--batch-size", "4", "--seq-len", "8", "--quiet", "--no-cache"])
        print(f"{name:28} {'fine-tuned.safetensors':50} {resume_digest('tuned.safetensors')}")


def batched(path: str) -> str:
    """The texts of `BATCHED`, all submitted to one batcher before it starts, in fp32."""
    import threading

    import charlm
    from charlm.generation.request import Request, Sampling
    from charlm.generation.sampling import encode_prefix
    from charlm.serve.batcher import Batcher, Generation

    model = charlm.load(path)
    batcher = Batcher(model.model, model.vocab, model.meta["tokens"], "digest", threads=1, precision="fp32")
    texts, ended = {}, []
    for index, (prefix, length, sampling, num_samples, seed) in enumerate(BATCHED):
        done = threading.Event()
        ended.append(done)
        texts.update({(index, sample): "" for sample in range(num_samples)})

        def on_text(sample: int, piece: str, index: int = index) -> None:
            texts[index, sample] += piece

        def on_end(error, done=done) -> None:
            if error is not None:
                raise SystemExit(f"batcher: {error}")
            done.set()

        ids = encode_prefix(prefix, model.vocab, model.meta["tokens"], model.meta["preprocess"])
        request = Request(prefix, length, Sampling(**sampling), seed, num_samples)
        batcher.submit(Generation(request, ids, on_text, on_end))
    for done in ended:
        done.wait(60)
    batcher.close()
    return "\x00".join(texts[key] for key in sorted(texts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="run only these kinds")
    args = parser.parse_args()
    import torch
    from click.testing import CliRunner

    from charlm.cli import cli

    from charlm.runtime import cores

    torch.set_num_threads(1)
    cores._machine_busy = lambda: None  # the machine reads as unknown: no run's threads follow its load (the tests' rule)
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
                outputs(name, lambda flags: checked(CliRunner().invoke(cli, flags), name, flags))
            finally:
                os.chdir(previous)


def checked(result, name: str, flags: list[str]):
    if result.exit_code != 0:
        raise SystemExit(f"{name}: charlm {' '.join(flags)} failed:\n{result.output}")
    return result


if __name__ == "__main__":
    main()
