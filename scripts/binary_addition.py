"""Binary addition, the classic lessons' 8-bit task, learned by the tagger through the charlm CLI.

Writes pairs of operands as a pair file, trains `charlm train --model-type tagger` on some of them
and prints the exact-sum accuracy (`charlm eval`) on operand pairs it never saw:

    python scripts/binary_addition.py                      # writes runs/binary-addition/, under a minute

A pair reads both operands least significant bit first, one character per bit position holding
both bits: a_i + 2 * b_i, so "0" is (0, 0), "1" is (1, 0), "2" is (0, 1), "3" is (1, 1). The target
is the sum's bits, least significant first. As in the lessons, operands are below 2 ** (bits - 1)
so the sum fits in `bits` bits: 13 + 6 = 19 at 8 bits is "12310000" -> "11001000".
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys


def bits_of(number: int, bits: int) -> list[int]:
    """The bits of `number`, least significant first."""
    return [(number >> position) & 1 for position in range(bits)]


def addition_pair(first: int, second: int, bits: int) -> tuple[str, str]:
    """(source, target) of first + second."""
    source = "".join(str(a + 2 * b) for a, b in zip(bits_of(first, bits), bits_of(second, bits)))
    target = "".join(map(str, bits_of(first + second, bits)))
    return source, target


def operand_split(bits: int, num_train: int, num_test: int, seed: int) -> tuple[list, list]:
    """Disjoint (training, held-out) lists of operand pairs, drawn from all 4 ** (bits - 1)."""
    limit = 2 ** (bits - 1)
    everything = [(first, second) for first in range(limit) for second in range(limit)]
    if num_train + num_test > len(everything):
        raise SystemExit(f"only {len(everything)} operand pairs at {bits} bits; ask for fewer")
    random.Random(seed).shuffle(everything)
    return everything[:num_train], everything[num_train : num_train + num_test]


def write_pairs(path: str, operands: list[tuple[int, int]], bits: int) -> None:
    with open(path, "w", encoding="utf-8") as file:
        file.writelines("\t".join(addition_pair(first, second, bits)) + "\n" for first, second in operands)


REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def charlm(*args: str) -> str:
    """Run the charlm CLI of this checkout (not another installed one) and return its stdout."""
    path = os.pathsep.join(filter(None, [REPOSITORY, os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "charlm", *args], check=True, stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": path}).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bits", type=int, default=8)
    parser.add_argument("--train", type=int, default=1000, help="operand pairs to train on")
    parser.add_argument("--test", type=int, default=2000, help="held-out operand pairs to score")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/binary-addition", help="folder for the pair files and the model")
    args = parser.parse_args()

    os.makedirs(args.out, exist_ok=True)
    train_path, test_path = os.path.join(args.out, "train.tsv"), os.path.join(args.out, "test.tsv")
    model_path = os.path.join(args.out, "tagger.safetensors")
    train, test = operand_split(args.bits, args.train, args.test, args.seed)
    write_pairs(train_path, train, args.bits)
    write_pairs(test_path, test, args.bits)
    charlm("train", train_path, "--model-type", "tagger", "--model", "rnn", "--embedding-size", "0",
           "--hidden-size", "16", "--optimizer", "adam", "--lr", "0.01", "--batch-size", "16",
           "--epochs", str(args.epochs), "--val-fraction", "0", "--seed", str(args.seed),
           "--out", model_path, "--quiet")
    report = json.loads(charlm("eval", "--checkpoint", model_path, test_path, "--json"))
    print(f"binary addition, {args.bits} bits: {100 * report['exact_match']:.2f} % exact sums on "
          f"{report['sources']} held-out operand pairs (trained on {len(train)})")


if __name__ == "__main__":
    main()
