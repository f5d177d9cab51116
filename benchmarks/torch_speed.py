"""PyTorch's `nn.LSTM` training speed at `charrnn bench`'s shape: the speed comparison's other side.

Not part of charrnn (PyTorch is not one of its dependencies); run it where torch is installed:

    python benchmarks/torch_speed.py                 # CPU: float32, then torch.autocast bfloat16
    python benchmarks/torch_speed.py --device cuda   # an NVIDIA GPU (cuDNN's LSTM)

Model and step as `charrnn bench` times them: embedding 64 -> nn.LSTM(64, 512, num_layers=2) ->
linear to a vocabulary of 65; random tokens, batch 64 × 100; Adam, gradient norm clipped at 5; the
state carried from step to step (detached). Best of 3 repeats of 5 timed steps after 3 warm-up
steps. Prints one JSON object on stdout: training characters/s per precision.
"""

import argparse
import json
import time

import torch
from torch import nn
from torch_lstm import CharLSTM  # the same model as the quality comparison


def measure(device: str, precision: str, args: argparse.Namespace) -> float:
    torch.manual_seed(0)
    model = CharLSTM(args.vocab, args.embed, args.hidden, args.layers).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    tokens = torch.randint(0, args.vocab, (args.batch_size, args.seq_len + 1), device=device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    zeros = torch.zeros(args.layers, args.batch_size, args.hidden, device=device)
    state = (zeros, zeros.clone())
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bfloat16")

    def step(state):
        with autocast:
            logits, state = model(inputs, state)
            loss = nn.functional.cross_entropy(logits.reshape(-1, args.vocab).float(), targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        return tuple(s.detach() for s in state), loss

    for _ in range(3):
        state, loss = step(state)
    best = float("inf")
    for _ in range(3):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(args.steps):
            state, loss = step(state)
        loss.item()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return args.steps * args.batch_size * args.seq_len / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--embed", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=65)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    figures = {"torch": torch.__version__, "device": args.device, "threads": torch.get_num_threads()}
    for precision in ("float32", "bfloat16"):
        try:
            figures[f"train_chars_per_s_{precision}"] = round(measure(args.device, precision, args))
        except RuntimeError as error:  # oneDNN has no bf16 LSTM on CPUs without bf16 instructions
            figures[f"train_chars_per_s_{precision}"] = f"unavailable: {str(error).splitlines()[0][:120]}"
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
