"""The plain PyTorch baseline of the README's comparison: nn.LSTM 2×512, trained for a time budget.

Not part of charrnn (PyTorch is not one of its dependencies); run it in an environment with torch:

    python benchmarks/torch_lstm.py tinyshakespeare.txt --time 5m

Model: embedding 64 -> nn.LSTM(64, 512, num_layers=2) -> linear to the vocabulary; batch 64 × 100
characters, Adam at a constant 2e-3, gradient norm clipped at 5, float32, the recurrent state
carried from window to window (truncated BPTT, zeroed at each epoch start). Data as charrnn
prepares it: the vocabulary is every distinct character, the last 10% of the characters are held
out, training windows are 64 contiguous streams side by side. Validation as charrnn evaluates:
every character of the held-out split exactly once, over 64 contiguous streams with the state
carried across windows, each stream after the 256 characters before it (read, not counted;
`--val-burn-in`). The time budget is wall time from the first step, validation passes
included, as for charrnn's --time; the throughput counts training steps only.

Prints, on stdout, the best validation loss in nats/char and the training throughput in chars/s.
"""

import argparse
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def parse_duration(text: str) -> float:
    """Seconds in 300, 90s, 10m, 1h30m."""
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip().lower())
    if not parts or "".join(n + u for n, u in parts) != text.strip().lower():
        raise argparse.ArgumentTypeError(f"not a duration: {text!r}")
    return sum(float(n) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[u] for n, u in parts)


def load(path: str, val_fraction: float, errors: str = "strict") -> tuple[np.ndarray, np.ndarray, int]:
    text = Path(path).read_bytes().decode("utf-8", errors)  # every character, \r included, as charrnn reads it
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = np.array([index[c] for c in text], dtype=np.int64)
    n_val = max(2, int(round(len(ids) * val_fraction)))
    return ids[:-n_val], ids[-n_val:], len(chars)


def training_windows(ids: np.ndarray, batch: int, length: int) -> tuple[np.ndarray, int]:
    """`batch` contiguous streams of `ids` side by side; window k is streams[:, k*length : (k+1)*length + 1]."""
    stream_len = (len(ids) - 1) // batch
    windows = stream_len // length
    if windows < 1:
        sys.exit(f"torch_lstm.py: the training split is too short for batch {batch} × {length}")
    streams = np.stack([ids[b * stream_len : b * stream_len + windows * length + 1] for b in range(batch)])
    return streams, windows


def evaluation_windows(ids: np.ndarray, batch: int, length: int, burn_in: int = 256):
    """Every target of `ids` exactly once: (inputs, targets, weights) windows over contiguous streams,
    each stream but the first reading the `burn_in` characters before it first, with weight 0."""
    n_targets = len(ids) - 1
    batch = max(1, min(batch, n_targets))
    stream_len = -(-n_targets // batch)
    early = [min(burn_in, b * stream_len) for b in range(batch)]
    padded = -(-(stream_len + max(early)) // length) * length
    inputs, targets = np.zeros((batch, padded), np.int64), np.zeros((batch, padded), np.int64)
    weights = np.zeros((batch, padded), np.float32)
    for b in range(batch):
        start = b * stream_len
        n = max(0, min(stream_len, n_targets - start))
        if n == 0:
            continue
        first, span = start - early[b], early[b] + n
        inputs[b, :span], targets[b, :span] = ids[first : first + span], ids[first + 1 : first + 1 + span]
        weights[b, early[b] : span] = 1.0
    return [
        tuple(torch.from_numpy(a[:, k : k + length]) for a in (inputs, targets, weights))
        for k in range(0, padded, length)
    ]


class CharLSTM(nn.Module):
    def __init__(self, vocab: int, embed: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens, state):
        out, state = self.lstm(self.embed(tokens), state)
        return self.head(out), state


@torch.no_grad()
def validate(model: CharLSTM, windows) -> float:
    model.eval()
    state, total, count = None, 0.0, 0.0
    for inputs, targets, weights in windows:
        logits, state = model(inputs, state)
        nats = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        total += float((nats * weights.flatten()).sum())
        count += float(weights.sum())
    model.train()
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("text", help="UTF-8 text file")
    parser.add_argument("--time", type=parse_duration, default=300.0, help="training time budget (default 5m)")
    parser.add_argument("--steps", type=int, default=None, help="also stop after this many steps")
    parser.add_argument("--eval-every", type=int, default=500, help="steps between validation passes")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--embed", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.1, help="held out at the end, as charrnn's")
    parser.add_argument("--errors", default="strict", help="undecodable bytes: strict or replace, as charrnn's")
    parser.add_argument("--val-burn-in", type=int, default=256, help="context read before each validation stream")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    train_ids, val_ids, vocab = load(args.text, args.val_fraction, args.errors)
    streams, windows = training_windows(train_ids, args.batch_size, args.seq_len)
    streams = torch.from_numpy(streams)
    val_windows = evaluation_windows(val_ids, args.batch_size, args.seq_len, args.val_burn_in)
    model = CharLSTM(vocab, args.embed, args.hidden, args.layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; vocabulary {vocab}, "
        f"{len(train_ids):,} training and {len(val_ids):,} validation characters",
        file=sys.stderr,
    )

    step, trained_seconds, best = 0, 0.0, math.inf
    state, began = None, time.perf_counter()
    done = False
    while not done:
        start = time.perf_counter()
        window = step % windows
        if window == 0:
            state = None  # a new epoch starts from a zero state, as in charrnn
        chunk = streams[:, window * args.seq_len : (window + 1) * args.seq_len + 1]
        logits, state = model(chunk[:, :-1], state)
        state = tuple(s.detach() for s in state)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        step += 1
        trained_seconds += time.perf_counter() - start
        done = time.perf_counter() - began >= args.time or (args.steps is not None and step >= args.steps)
        if step % args.eval_every == 0 or done:
            val = validate(model, val_windows)
            best = min(best, val)
            print(
                f"step {step} epoch {step / windows:.2f} train {loss.item():.4f} validation {val:.4f} nats/char "
                f"{step * args.batch_size * args.seq_len / trained_seconds:,.0f} chars/s",
                file=sys.stderr,
            )
    chars_per_second = step * args.batch_size * args.seq_len / trained_seconds
    print(f"best validation loss {best:.4f} nats/char; {chars_per_second:,.0f} chars/s; {step} steps")


if __name__ == "__main__":
    main()
