"""charlm against the lessons' loops and against the machine's limit, side by side in one run.

    python scripts/bench.py                 # the table (about 2-3 minutes on 2 cores)
    python scripts/bench.py --json out.json # and every number as JSON

Measures, on the same machine in the same run:
  (a) charlm training tokens/s for rnn/gru/lstm at the lessons' config (vocab 28, hidden 512,
      seq_len 35, batch 32, one-hot, SGD lr 1, clip 1), torch cells and from-scratch, and at
      charlm's default config (2-layer LSTM 512, embedding 64, seq_len 35, AdamW);
  (b) the same work in plain PyTorch written as the lessons write it (d2l's RNNModelScratch python
      loop; nn.<cell> + nn.Linear);
  (c) generation chars/s: charlm (`generate`: greedy like the lessons, sampled, and 32 samples at
      once) against the lessons' predict loop (one nn.<cell> call per char, argmax);
  (d) FLOP-bound limits from a matmul rate measured here at the recurrent step's shapes:
      training ~ 3 x 2 x (G*H*(I+H) + H*V) FLOPs per token at the (B, H) x (H, G*H) rate,
      generation ~ 2 x (sum over layers of G*H*(I+H) + H*V) FLOPs per char at the (1, H) x (H, G*H) rate;
  (e) `charlm --help` wall time;
  (f) the transformer at nanoGPT's CPU recipe (4 layers, 4 heads, 128 wide, context 64, batch 12,
      AdamW 1e-3): charlm's training step against `plain_gpt.py`'s nanoGPT-style loop, and charlm's
      cached generation against nanoGPT's `generate` (crop to the context, recompute it for every
      character), at context 64 and 256; limits from a matmul rate measured here: training
      6N + 12 L E T FLOPs per token (nanoGPT's estimate) at the (B*T, E) x (E, 4E) rate, generation
      one position per char, 2N + 4 L E T FLOPs, at the (1, E) x (E, 4E) rate (the window's
      half recomputed every T/2 chars is left out: it runs as larger, faster matmuls).
Timings are the best of several rounds; each round times every side of a ratio in turn (the
matmul that prices the limit included), so load from other processes hits them alike.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from charlm.generation.request import Sampling
from charlm.generation.sampling import generate  # noqa: E402
from charlm.models.recurrent import LanguageModel, ModelConfig  # noqa: E402
from charlm.training.optimization import TrainConfig  # noqa: E402
from charlm.runtime.measured import Decisions, bf16_capable, choose_generation_precision, cpu_name  # noqa: E402
from charlm.training.trainer import Trainer  # noqa: E402
from charlm.models.transformer import Transformer, TransformerConfig  # noqa: E402
import plain_gpt  # noqa: E402  (beside this script)

GATES = {"rnn": 1, "gru": 3, "lstm": 4}
LESSONS = dict(vocab_size=28, hidden_size=512, seq_len=35, batch_size=32)


def best_seconds(timed: dict[str, tuple[Callable[[], object], int]], repeats: int) -> dict[str, float]:
    """Seconds per call of each `name: (function, calls)`, the best of `repeats` rounds. Each round
    runs every function in turn, so load from other processes (this machine is shared) hits the
    things a ratio compares alike, instead of one of them."""
    for function, _ in timed.values():
        function()  # warm-up
    best = dict.fromkeys(timed, math.inf)
    for _ in range(repeats):
        for name, (function, calls) in timed.items():
            start = time.perf_counter()
            for _ in range(calls):
                function()
            best[name] = min(best[name], (time.perf_counter() - start) / calls)
    return best


# ---------------------------------------------------------------------------------------------
# Limits


def matmul(rows: int, inner: int, cols: int) -> tuple[Callable[[], object], int]:
    """(rows, inner) x (inner, cols), to time as `best_seconds` does, with its FLOPs."""
    a, b = torch.randn(rows, inner), torch.randn(cols, inner)
    out = torch.empty(rows, cols)
    return (lambda: torch.mm(a, b.t(), out=out)), 2 * rows * inner * cols


def forward_flops(cell: str, input_size: int, hidden_size: int, num_layers: int, vocab_size: int) -> int:
    gate_size = GATES[cell] * hidden_size
    layers = sum(gate_size * ((input_size if k == 0 else hidden_size) + hidden_size) for k in range(num_layers))
    return 2 * (layers + hidden_size * vocab_size)


# ---------------------------------------------------------------------------------------------
# Training


class _Batches:
    """A fixed random batch, forever: the trainer's batch-source interface."""

    carries_state = True

    def __len__(self) -> int:
        return 1_000_000  # the schedule's plan: the rate stays at --lr for a benchmark

    def __init__(self, vocab_size: int, batch_size: int, seq_len: int) -> None:
        generator = torch.Generator().manual_seed(0)
        tokens = torch.randint(vocab_size, (batch_size, seq_len + 1), generator=generator)
        self.batch = (tokens[:, :-1], tokens[:, 1:])

    def batches(self, epoch: int, start: int = 0):
        yield self.batch


def charlm_training(cell: str, from_scratch: bool, embedding_size: int, num_layers: int, seq_len: int,
                    optimizer: str, lr: float, precision: str = "fp32") -> tuple[callable, str]:
    """charlm's own training step (`Trainer._train_step`) on a fixed batch, in the setup a run
    takes (`Trainer._choose_setup`: the recurrent path, and with "auto" the precision, measured
    here), and that setup in words."""
    config = ModelConfig(vocab_size=LESSONS["vocab_size"], cell=cell, embedding_size=embedding_size,
                         hidden_size=LESSONS["hidden_size"], num_layers=num_layers, from_scratch=from_scratch,
                         dropout=0.0)
    train = TrainConfig(optimizer=optimizer, lr=lr, clip=1.0, batch_size=LESSONS["batch_size"], seq_len=seq_len,
                        device="cpu", precision=precision)
    batches = _Batches(LESSONS["vocab_size"], LESSONS["batch_size"], seq_len)
    trainer = Trainer(LanguageModel(config), batches, None, train, "/tmp/charlm-bench.safetensors", {}, progress=False)
    trainer.model.train()
    trainer.precision = trainer._choose_setup()
    path = {True: "kernels", False: "torch", None: "rule"}[trainer.model.fast_path]
    shown = "bf16" if trainer.precision == "bf16" else f"fp32 {path}"
    return (lambda: trainer._train_step(batches.batch)), shown


def lesson_training(cell: str | None, embedding_size: int = 0, num_layers: int = 1, seq_len: int = 35,
                    optimizer: str = "sgd", lr: float = 1.0, precision: str = "fp32") -> callable:
    """The lessons' loop: one-hot (or embedding) -> nn.<cell> -> nn.Linear, or, with cell=None,
    d2l's RNNModelScratch (a python loop over steps); d2l's grad clipping; the state carried."""
    torch.manual_seed(0)
    vocab_size, hidden_size, batch_size = LESSONS["vocab_size"], LESSONS["hidden_size"], LESSONS["batch_size"]
    batch = _Batches(vocab_size, batch_size, seq_len).batch
    if cell is None:
        normal = lambda *shape: nn.Parameter(torch.randn(*shape) * 0.01)
        params = [normal(vocab_size, hidden_size), normal(hidden_size, hidden_size), nn.Parameter(torch.zeros(hidden_size)),
                  normal(hidden_size, vocab_size), nn.Parameter(torch.zeros(vocab_size))]

        def forward(inputs, state):
            w_xh, w_hh, b_h, w_hq, b_q = params
            h, outputs = state, []
            for x in F.one_hot(inputs.T, vocab_size).float():  # (B, V) per step
                h = torch.tanh(x @ w_xh + h @ w_hh + b_h)
                outputs.append(h @ w_hq + b_q)
            return torch.cat(outputs, dim=0), h  # (T*B, V), time-major like d2l

        state = [torch.zeros(batch_size, hidden_size)]
        targets = batch[1].T.reshape(-1)
    else:
        embedding = nn.Embedding(vocab_size, embedding_size) if embedding_size else None
        rnn = getattr(nn, cell.upper())(embedding_size or vocab_size, hidden_size, num_layers)
        head = nn.Linear(hidden_size, vocab_size)
        modules = [m for m in (embedding, rnn, head) if m is not None]
        params = [p for m in modules for p in m.parameters()]

        def forward(inputs, state):
            x = embedding(inputs.T) if embedding is not None else F.one_hot(inputs.T, vocab_size).float()
            y, state = rnn(x, state)  # time-major, as d2l's RNNModel
            return head(y.reshape(-1, y.shape[-1])), state

        state = [None]
        targets = batch[1].T.reshape(-1)
    opt = torch.optim.SGD(params, lr=lr) if optimizer == "sgd" else torch.optim.AdamW(params, lr=lr)

    def step():
        s = state[0]
        if s is not None:
            s = tuple(t.detach() for t in s) if isinstance(s, tuple) else s.detach()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits, state[0] = forward(batch[0], s)
        loss = F.cross_entropy(logits.float(), targets)
        opt.zero_grad()
        loss.backward()
        norm = torch.sqrt(sum(torch.sum(p.grad**2) for p in params))  # d2l's grad_clipping
        if norm > 1:
            for p in params:
                p.grad[:] *= 1 / norm
        opt.step()

    return step


# ---------------------------------------------------------------------------------------------
# Generation


def lesson_predict(model: LanguageModel) -> callable:
    """d2l's predict_ch8: one call of the recurrent module per char, argmax (with autograd on, as
    predict_ch8 has it)."""
    vocab_size = model.config.vocab_size

    def run(length: int) -> None:
        state, token = None, torch.zeros(1, 1, dtype=torch.long)
        for _ in range(length):
            x = F.one_hot(token, vocab_size).float() if model.embedding is None else model.embedding(token)
            y, state = model.rnn(x, state)
            token = model.head(y).argmax(-1)

    return run


def generation_rates(cell: str, num_layers: int, embedding_size: int, repeats: int) -> dict[str, float]:
    """chars/s of the lessons' loop and of charlm (greedy, sampled, 32 samples in fp32 and in
    bf16), the limit, and what `--precision auto` takes here for one sample and for 32."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=LESSONS["vocab_size"], cell=cell, embedding_size=embedding_size,
                         hidden_size=LESSONS["hidden_size"], num_layers=num_layers)
    model = LanguageModel(config).eval()
    lesson_length = 20 if cell == "lstm" else 200  # oneDNN's single-step LSTM is ~47 ms a step
    single, batched, hidden = 400, 100, LESSONS["hidden_size"]
    matvec, matvec_flops = matmul(1, hidden, GATES[cell] * hidden)
    seconds = best_seconds({
        "lesson": (lambda: lesson_predict(model)(lesson_length), 1),
        "charlm": (lambda: generate(model, [1], single, Sampling(greedy=True)), 1),
        "charlm_sampled": (lambda: generate(model, [1], single, Sampling(), seed=0), 1),
        "charlm_32": (lambda: generate(model, [1], batched, Sampling(), num_samples=32, seed=0), 1),
        "charlm_32_bf16": (lambda: generate(model, [1], batched, Sampling(), num_samples=32, seed=0,
                                            precision="bf16"), 1),
        "matvec": (matvec, 1000),
    }, repeats)
    auto = {rows: choose_generation_precision(model, rows, Decisions(None))[0] for rows in (1, 32)}
    flops = forward_flops(cell, embedding_size or LESSONS["vocab_size"], hidden, num_layers, LESSONS["vocab_size"])
    return {
        "lesson": lesson_length / seconds["lesson"],
        "charlm": single / seconds["charlm"],
        "charlm_sampled": single / seconds["charlm_sampled"],
        "charlm_32": 32 * batched / seconds["charlm_32"],
        "charlm_32_bf16": 32 * batched / seconds["charlm_32_bf16"],
        "auto": f"{auto[1]}/{auto[32]}",
        "limit": matvec_flops / seconds["matvec"] / flops,
    }


# ---------------------------------------------------------------------------------------------
# The transformer against nanoGPT's loops

RECIPE = dict(vocab_size=65, num_layers=4, num_heads=4, embedding_size=128, seq_len=64, batch_size=12)


def transformer_flops(seq_len: int, training: bool) -> int:
    """FLOPs per token: nanoGPT's 6N + 12 L E T for a training step, 2N + 4 L E T for one generated
    position; N counts the matrices the products run through (the tied head included)."""
    layers, width, vocab = RECIPE["num_layers"], RECIPE["embedding_size"], RECIPE["vocab_size"]
    matrices = layers * 12 * width * width + vocab * width
    return (6 * matrices + 12 * layers * width * seq_len) if training else (2 * matrices + 4 * layers * width * seq_len)


def transformer_training(repeats: int) -> dict[str, float]:
    """tokens/s of charlm's training step (`Trainer._train_step`) and of the plain loop's, and the limit."""
    batch_size, seq_len, vocab = RECIPE["batch_size"], RECIPE["seq_len"], RECIPE["vocab_size"]
    data = torch.randint(vocab, (200_000,), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    plain_step = plain_gpt.trainer(plain_gpt.GPT(vocab), data, batch_size, steps=2000)
    batches = _Batches(vocab, batch_size, seq_len)
    batches.carries_state = False
    config = TransformerConfig(vocab, RECIPE["embedding_size"], RECIPE["num_layers"], RECIPE["num_heads"], seq_len, 0.0)
    train = TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.1, warmup_steps=100, clip=1.0, batch_size=batch_size,
                        seq_len=seq_len, iterator="random", device="cpu", precision="fp32")
    trainer = Trainer(Transformer(config), batches, None, train, "/tmp/charlm-bench.safetensors", {}, progress=False)
    trainer.model.train()
    width = RECIPE["embedding_size"]
    product, product_flops = matmul(batch_size * seq_len, width, 4 * width)
    seconds = best_seconds({"charlm": (lambda: trainer._train_step(batches.batch), 5), "plain": (plain_step, 5),
                            "matmul": (product, 50)}, repeats)
    tokens = batch_size * seq_len
    return {"charlm": tokens / seconds["charlm"], "plain": tokens / seconds["plain"],
            "limit": product_flops / seconds["matmul"] / transformer_flops(seq_len, training=True)}


def transformer_generation(seq_len: int, repeats: int) -> dict[str, float]:
    """chars/s of charlm's `generate` (sampled, one sample) and of nanoGPT's recomputing loop, after a
    prefix of a whole window and for two windows more (so charlm's cache fills and is halved)."""
    vocab, width = RECIPE["vocab_size"], RECIPE["embedding_size"]
    torch.manual_seed(0)
    config = TransformerConfig(vocab, width, RECIPE["num_layers"], RECIPE["num_heads"], seq_len, 0.0)
    model, plain = Transformer(config).eval(), plain_gpt.GPT(vocab, block_size=seq_len).eval()
    prefix = torch.randint(vocab, (seq_len,), generator=torch.Generator().manual_seed(1)).tolist()
    length = 2 * seq_len
    vector, vector_flops = matmul(1, width, 4 * width)
    seconds = best_seconds({
        "charlm": (lambda: generate(model, prefix, length, Sampling(), seed=0), 1),
        "recompute": (lambda: plain.generate(torch.tensor([prefix]), length), 1),
        "matvec": (vector, 1000),
    }, repeats)
    return {"charlm": length / seconds["charlm"], "recompute": length / seconds["recompute"],
            "limit": vector_flops / seconds["matvec"] / transformer_flops(seq_len, training=False)}


def transformer_rows(repeats: int, results: dict) -> None:
    shape = "4 layers x 128, 4 heads, batch 12"
    print(f"\ntransformer: nanoGPT's CPU recipe ({shape}) against a plain nanoGPT-style loop (scripts/plain_gpt.py)")
    print(f"{'training tokens/s':<28}{'charlm':>9}{'plain':>9}{'limit':>9}{'ch/plain':>10}{'ch/limit':>10}")
    rates = transformer_training(repeats)
    results["transformer_training"] = rates
    print(f"{'context 64':<28}{rates['charlm']:>9,.0f}{rates['plain']:>9,.0f}{rates['limit']:>9,.0f}"
          f"{rates['charlm'] / rates['plain']:>9.2f}x{rates['charlm'] / rates['limit']:>10.0%}", flush=True)
    print(f"{'generation chars/s':<28}{'charlm':>9}{'recompute':>10}{'limit':>9}{'ch/recomp':>10}{'ch/limit':>10}")
    results["transformer_generation"] = []
    for seq_len in (64, 256):
        rates = transformer_generation(seq_len, repeats)
        results["transformer_generation"].append({"seq_len": seq_len, **rates})
        print(f"{f'context {seq_len}, sampled':<28}{rates['charlm']:>9,.0f}{rates['recompute']:>10,.0f}"
              f"{rates['limit']:>9,.0f}{rates['charlm'] / rates['recompute']:>9.1f}x"
              f"{rates['charlm'] / rates['limit']:>10.0%}", flush=True)


def help_seconds(repeats: int) -> float:
    command = [sys.executable, "-m", "charlm", "--help"]
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
        best = min(best, time.perf_counter() - start)
    return best


# ---------------------------------------------------------------------------------------------


def recurrent_rows(repeats: int, results: dict) -> None:
    (V, H, T, B) = LESSONS.values()
    print("training tokens/s")
    print(f"{'work':<30}{'setup':>14}{'charlm':>9}{'lesson':>9}{'limit':>9}{'ch/lesson':>11}{'ch/limit':>10}")
    rows = [(f"{cell} (torch cell)", cell, False, 0, 1, T, "sgd", 1.0, cell) for cell in GATES]
    rows += [(f"{cell} (from scratch)", cell, True, 0, 1, T, "sgd", 1.0, None if cell == "rnn" else "-")
             for cell in GATES]
    rows += [("default: lstm 2x512 emb64 T35", "lstm", False, 64, 2, 35, "adamw", 3e-3, "lstm")]
    if bf16_capable():  # both sides under bf16 autocast; the limit stays fp32's matmul rate
        rows += [("default, bf16 autocast", "lstm", False, 64, 2, 35, "adamw", 3e-3, "lstm")]
    rows += [("default, --precision auto", "lstm", False, 64, 2, 35, "adamw", 3e-3, "lstm")]
    for name, cell, scratch, embedding, layers, seq_len, optimizer, lr, lesson in rows:
        precision = "bf16" if "bf16" in name else "auto" if "auto" in name else "fp32"
        step, step_flops = matmul(B, H, GATES[cell] * H)
        charlm_step, setup = charlm_training(cell, scratch, embedding, layers, seq_len, optimizer, lr, precision)
        lesson_precision = "fp32" if precision == "auto" else precision  # auto: against the plain fp32 loop
        timed = {"charlm": (charlm_step, 3), "matmul": (step, 200)}
        if lesson != "-":
            timed["lesson"] = (lesson_training(lesson, embedding, layers, seq_len, optimizer, lr, lesson_precision), 3)
        seconds = best_seconds(timed, repeats)
        limit = step_flops / seconds["matmul"] / (3 * forward_flops(cell, embedding or V, H, layers, V))
        charlm_rate = B * seq_len / seconds["charlm"]
        lesson_rate = B * seq_len / seconds["lesson"] if "lesson" in seconds else None
        results["training"].append({"work": name, "setup": setup, "charlm": charlm_rate, "lesson": lesson_rate,
                                    "limit": limit})
        shown = f"{lesson_rate:>9,.0f}" if lesson_rate else f"{'':>9}"
        ratio = f"{charlm_rate / lesson_rate:>10.2f}x" if lesson_rate else f"{'':>11}"
        print(f"{name:<30}{setup:>14}{charlm_rate:>9,.0f}{shown}{limit:>9,.0f}{ratio}{charlm_rate / limit:>10.0%}", flush=True)

    print("\ngeneration chars/s (greedy, one sample, like the lessons; then sampled, and 32 samples at once in fp32 "
          "and in bf16; auto: what --precision auto takes for 1 and for 32)")
    print(f"{'model':<22}{'charlm':>9}{'sampled':>9}{'x32':>9}{'x32 bf16':>9}{'auto':>10}{'lesson':>9}{'limit':>9}"
          f"{'ch/lesson':>11}{'ch/limit':>10}")
    for cell, layers, embedding in [("rnn", 1, 0), ("gru", 1, 0), ("lstm", 1, 0), ("lstm", 2, 0), ("lstm", 2, 64)]:
        rates = generation_rates(cell, layers, embedding, repeats)
        limit = rates.pop("limit")
        name = f"{cell} {layers}x{H}" + (f" emb{embedding}" if embedding else " one-hot")
        results["generation"].append({"model": name, **rates, "limit": limit})
        print(f"{name:<22}{rates['charlm']:>9,.0f}{rates['charlm_sampled']:>9,.0f}{rates['charlm_32']:>9,.0f}"
              f"{rates['charlm_32_bf16']:>9,.0f}{rates['auto']:>10}{rates['lesson']:>9,.0f}{limit:>9,.0f}"
              f"{rates['charlm'] / rates['lesson']:>10.1f}x{rates['charlm'] / limit:>10.0%}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per number; the best counts")
    parser.add_argument("--json", type=Path, help="also write every number here")
    parser.add_argument("--only", choices=("rnn", "transformer"),
                        help="only the recurrent models' rows, or the transformer's")
    parser.add_argument("--threads", type=int, help="torch's CPU threads [default: torch's]")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats, (V, H, T, B) = args.repeats, LESSONS.values()
    results: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "training": [], "generation": []}
    results.update(cpu=cpu_name(), bf16=bf16_capable())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU {cpu_name()} "
          f"(bf16 matrix instructions: {'yes' if bf16_capable() else 'no'}); lessons' config V={V} H={H} T={T} B={B}")
    print("charlm's setup is what a run takes (charlm.runtime.measured): the recurrent path (charlm's kernels or torch's "
          "module) measured here, and for 'auto' bf16 where it measures faster with the same loss\n")

    if args.only != "transformer":
        recurrent_rows(repeats, results)
    if args.only != "rnn":
        transformer_rows(repeats, results)
    results["help_seconds"] = help_seconds(max(repeats, 3))
    print(f"\ncharlm --help: {results['help_seconds']:.3f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
