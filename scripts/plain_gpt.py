"""The plain reference charlm's transformer is measured against: a GPT and a training loop written
the way nanoGPT's README runs `shakespeare_char` on a CPU, in plain PyTorch, without charlm.

    python scripts/plain_gpt.py corpora/tinyshakespeare.txt --max-steps 2000 --threads 1

trains nanoGPT's CPU recipe (4 layers, 4 heads, 128 wide, block 64, batch 12, dropout 0, AdamW
lr 1e-3 with betas (0.9, 0.99), weight decay 0.1 on matrices, warm-up 100 steps then a cosine to
1e-4 at the last step, gradient clipping at 1) on random windows of the first 90 % of the text,
then prints the loss over the whole last 10 % (non-overlapping windows of the block, as charlm
evaluates) and the seconds per step. `scripts/bench.py` times its step and its `generate` (which
crops the context to the block and recomputes it for every character, as nanoGPT's does).
Written for this project, not copied: the shapes and the recipe are nanoGPT's.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.c_attn = nn.Linear(width, 3 * width, bias=False)
        self.c_proj = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0, is_causal=True)
        return F.dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)), self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(width, bias=False), Attention(width, heads, dropout)
        self.ln_2 = nn.LayerNorm(width, bias=False)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width, bias=False), nn.GELU(),
                                 nn.Linear(4 * width, width, bias=False), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab_size: int, layers: int = 4, heads: int = 4, width: int = 128, block_size: int = 64,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.block_size = block_size
        self.wte, self.wpe = nn.Embedding(vocab_size, width), nn.Embedding(block_size, width)
        self.drop = nn.Dropout(dropout)
        self.h = nn.ModuleList(Block(width, heads, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width, bias=False)
        self.lm_head = nn.Linear(width, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        for name, parameter in self.named_parameters():
            if parameter.dim() == 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("c_proj.weight", "mlp.2.weight")) else 0.02
                nn.init.normal_(parameter, 0.0, std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(idx.shape[1])))
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        if targets is None:  # inference: the head on the last position only, as nanoGPT
            return self.lm_head(x[:, [-1]]), None
        logits = self.lm_head(x)
        return logits, F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """nanoGPT's loop: crop to the block, recompute the whole context, sample one character."""
        for _ in range(new_tokens):
            logits, _ = self(idx if idx.shape[1] <= self.block_size else idx[:, -self.block_size:])
            probs = F.softmax(logits[:, -1, :], dim=-1)
            idx = torch.cat((idx, torch.multinomial(probs, num_samples=1)), dim=1)
        return idx


def make_optimizer(model: GPT, lr: float = 1e-3, weight_decay: float = 0.1) -> torch.optim.AdamW:
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99))


def rate(step: int, steps: int, lr: float = 1e-3, min_lr: float = 1e-4, warmup: int = 100) -> float:
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    ratio = min((step - warmup) / max(steps - warmup, 1), 1.0)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def trainer(model: GPT, data: torch.Tensor, batch_size: int, steps: int, seed: int = 0):
    """One training step per call, as nanoGPT's loop: a random batch, forward, backward, clip, step."""
    optimizer, generator = make_optimizer(model), torch.Generator().manual_seed(seed)
    block, counter = model.block_size, [0]

    def step() -> float:
        ix = torch.randint(len(data) - block, (batch_size,), generator=generator)
        x = torch.stack([data[i : i + block] for i in ix])
        y = torch.stack([data[i + 1 : i + 1 + block] for i in ix])
        for group in optimizer.param_groups:
            group["lr"] = rate(counter[0], steps)
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        counter[0] += 1
        return loss

    return step


@torch.no_grad()
def held_out_loss(model: GPT, data: torch.Tensor) -> float:
    """The mean loss over every position of `data`, in non-overlapping windows of the block."""
    model.eval()
    block, total, count = model.block_size, 0.0, 0
    usable = (len(data) - 1) // block * block
    x, y = data[:usable].view(-1, block), data[1 : usable + 1].view(-1, block)
    for start in range(0, len(x), 256):
        logits, _ = model(x[start : start + 256], y[start : start + 256])
        total += float(F.cross_entropy(logits.flatten(0, 1), y[start : start + 256].flatten(), reduction="sum"))
        count += y[start : start + 256].numel()
    model.train()
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    text = args.corpus.read_text(encoding="utf-8")
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    train, val = ids[: int(0.9 * len(ids))], ids[int(0.9 * len(ids)):]
    torch.manual_seed(1337)
    model = GPT(len(chars))
    step = trainer(model, train, batch_size=12, steps=args.max_steps)
    started = time.perf_counter()
    for _ in range(args.max_steps):
        step()
    seconds = time.perf_counter() - started
    print(f"plain loop: {args.max_steps} steps in {seconds:.1f} s ({1000 * seconds / args.max_steps:.2f} ms/step, "
          f"{args.threads} thread(s)); held-out loss {held_out_loss(model, val):.4f} over {len(val) - 1:,} positions")


if __name__ == "__main__":
    main()
