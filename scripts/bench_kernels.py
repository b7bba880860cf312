"""Training throughput of charlm.models.recurrent_layers.recurrent against plain nn.RNN/GRU/LSTM.

One training step = one-hot input -> recurrent layer -> nn.Linear head -> cross
entropy -> backward -> clip_grad_norm_ -> SGD step, with the final state carried
(detached) to the next batch. For each cell it prints tokens/s for the torch
module and for the fast path, with oneDNN (mkldnn) on and off, next to the
FLOP-bound limit: training FLOPs per token, about 3 x 2 x (G*H*(I+H) + H*V),
divided by the measured matmul rate at the recurrent step's shape (B, H) x (H, G*H).

"fast" is the fast path forced on; `recurrent`'s default picks the faster of the
two, which for a float32 LSTM with mkldnn on is torch's own (oneDNN's fused LSTM).
The machine is shared, so every number is the best of several interleaved repeats.

    python scripts/bench_kernels.py [--cells rnn gru lstm] [--repeats 15]
"""

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from charlm.models.recurrent_layers import recurrent  # noqa: E402

warnings.filterwarnings("ignore", message="TF32 acceleration")  # from mkldnn.flags()

CELLS = {"rnn": (nn.RNN, 1), "gru": (nn.GRU, 3), "lstm": (nn.LSTM, 4)}


def seconds_per_call(step, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        step()
    return (time.perf_counter() - start) / calls


def matmul_step(batch_size: int, hidden_size: int, gate_size: int):
    """The recurrent step's matmul, (B, H) x (H, G*H), and its FLOPs."""
    h = torch.randn(batch_size, hidden_size)
    weight = torch.randn(gate_size, hidden_size)
    out = torch.empty(batch_size, gate_size)
    return lambda: torch.mm(h, weight.t(), out=out), 2 * batch_size * hidden_size * gate_size


def training_step(cell: str, fast: bool, args):
    """One training step on a fixed batch, through the torch module or the fast path."""
    torch.manual_seed(0)
    module_class, _ = CELLS[cell]
    rnn = module_class(args.vocab_size, args.hidden_size, batch_first=True)
    head = nn.Linear(args.hidden_size, args.vocab_size)
    params = list(rnn.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=0.1)
    tokens = torch.randint(args.vocab_size, (args.batch_size, args.seq_len + 1))
    state = None

    def step():
        nonlocal state
        x = F.one_hot(tokens[:, :-1], args.vocab_size).float()  # (B, T, V)
        out, state = recurrent(rnn, x, state, fast=fast)  # (B, T, H)
        state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        logits = head(out)  # (B, T, V)
        loss = F.cross_entropy(logits.view(-1, args.vocab_size), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    step()  # warm-up
    return step


def measure(cell: str, args) -> tuple[float, float, float]:
    """Best tokens/s of (torch module, fast path, FLOP-bound limit), timed in
    interleaved rounds so that load from other processes hits all three alike."""
    gate_size = CELLS[cell][1] * args.hidden_size
    forward_flops = 2 * (gate_size * (args.vocab_size + args.hidden_size)
                         + args.hidden_size * args.vocab_size)  # per token
    matmul, matmul_flops = matmul_step(args.batch_size, args.hidden_size, gate_size)
    plain, fast = training_step(cell, False, args), training_step(cell, True, args)
    best = [float("inf")] * 3
    for _ in range(args.repeats):
        seconds = [seconds_per_call(plain, args.calls), seconds_per_call(fast, args.calls),
                   seconds_per_call(matmul, 100) / matmul_flops * 3 * forward_flops * args.batch_size * args.seq_len]
        best = [min(b, s) for b, s in zip(best, seconds)]
    return tuple(args.batch_size * args.seq_len / b for b in best)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--vocab-size", type=int, default=28)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=35)
    parser.add_argument("--calls", type=int, default=2, help="training steps per timed run")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs; the best counts")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"V={args.vocab_size} H={args.hidden_size} B={args.batch_size} T={args.seq_len}")
    print(f"{'cell':<5} {'mkldnn':<6} {'nn tok/s':>9} {'fast tok/s':>10} {'limit':>7} "
          f"{'fast/nn':>7} {'nn/lim':>6} {'fast/lim':>8}")
    for cell in args.cells:
        for mkldnn in (True, False):
            with torch.backends.mkldnn.flags(enabled=mkldnn):
                plain, fast, limit = measure(cell, args)
            print(f"{cell:<5} {'on' if mkldnn else 'off':<6} {plain:>9.0f} {fast:>10.0f} {limit:>7.0f} "
                  f"{fast / plain:>7.2f} {plain / limit:>6.0%} {fast / limit:>8.0%}", flush=True)


if __name__ == "__main__":
    main()
