"""charrnn's LSTM training step beside the same step on JAX's cuDNN LSTM (`jax.experimental.rnn`).

Decides whether the plain LSTM should use cuDNN on GPUs (issue 25): both are timed in one process,
at `charrnn bench`'s model (embedding 64 -> 2×512 LSTM -> linear to 65) and at the shapes given,
on random tokens: Adam, gradient norm clipped at 5, the state carried (gradient stopped). cuDNN's
LSTM runs only on NVIDIA GPUs; elsewhere the script says so and times charrnn alone.

    python benchmarks/cudnn_lstm.py --shapes 64x100,512x100

Prints one JSON object on stdout: training characters/s per shape and precision, for each side.
"""

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import optax
from jax.experimental import rnn

from charrnn.bench import bench_train
from charrnn.config import ModelConfig, TrainConfig


def cudnn_chars_per_second(dtype: str, batch: int, length: int, args: argparse.Namespace) -> float:
    """Best of 3 repeats of `args.steps` training steps of the cuDNN model."""
    keys = jax.random.split(jax.random.key(0), 4)
    params = {
        "embed": 0.1 * jax.random.normal(keys[0], (args.vocab, args.embed)),
        "lstm": rnn.init_lstm_weight(keys[1], args.embed, args.hidden, args.layers, False),
        "out": 0.05 * jax.random.normal(keys[2], (args.hidden, args.vocab)),
        "bias": jnp.zeros((args.vocab,)),
    }
    tokens = jax.random.randint(keys[3], (batch, length + 1), 0, args.vocab)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    lengths = jnp.full((batch,), length, jnp.int32)
    cast = jnp.dtype(dtype)

    def loss(params, h, c):
        x = params["embed"][inputs].astype(cast)
        y, h, c = rnn.lstm(
            x, h.astype(cast), c.astype(cast), params["lstm"].astype(cast), lengths,
            input_size=args.embed, hidden_size=args.hidden, num_layers=args.layers, dropout=0.0, bidirectional=False,
        )  # fmt: skip
        logits = jnp.matmul(y, params["out"].astype(cast), preferred_element_type=jnp.float32) + params["bias"]
        nats = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
        return nats, (h.astype(jnp.float32), c.astype(jnp.float32))

    optimizer = optax.chain(optax.clip_by_global_norm(5.0), optax.adam(2e-3))

    @jax.jit
    def step(params, opt_state, h, c):
        (nats, (h, c)), grads = jax.value_and_grad(loss, has_aux=True)(params, h, c)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, jax.lax.stop_gradient(h), jax.lax.stop_gradient(c), nats

    h = c = jnp.zeros((args.layers, batch, args.hidden))
    state = (params, optimizer.init(params), h, c)
    for _ in range(3):
        *state, nats = step(*state)
    jax.block_until_ready(nats)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(args.steps):
            *state, nats = step(*state)
        jax.block_until_ready(nats)
        best = min(best, time.perf_counter() - started)
    return args.steps * batch * length / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="64x100", help="batch x window, comma-separated")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--embed", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=65)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    figures: dict = {"jax": jax.__version__, "devices": [str(d) for d in jax.devices()], "shapes": {}}
    on_gpu = jax.default_backend() == "gpu"
    for shape in args.shapes.split(","):
        batch, length = map(int, shape.split("x"))
        row = figures["shapes"][shape] = {}
        for dtype in args.dtypes.split(","):
            model = ModelConfig(
                vocab_size=args.vocab, cell="lstm", layers=args.layers, hidden_size=args.hidden,
                embed_size=args.embed, dropout=0.0, dtype=dtype,
            )  # fmt: skip
            train = TrainConfig(batch_size=batch, seq_len=length)
            row[f"charrnn_{dtype}"] = round(bench_train(model, train, args.steps)["chars_per_second"])
            if not on_gpu:
                row[f"cudnn_{dtype}"] = "unavailable: cuDNN runs on NVIDIA GPUs only"
                continue
            try:
                row[f"cudnn_{dtype}"] = round(cudnn_chars_per_second(dtype, batch, length, args))
            except Exception as error:  # noqa: BLE001 - an unsupported precision is a finding, not a crash
                row[f"cudnn_{dtype}"] = f"unavailable: {str(error).splitlines()[0][:160]}"
            if isinstance(row[f"cudnn_{dtype}"], int):
                row[f"cudnn_over_charrnn_{dtype}"] = round(row[f"cudnn_{dtype}"] / row[f"charrnn_{dtype}"], 3)
        print(json.dumps({shape: row}), flush=True, file=sys.stderr)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
