"""Where a training step's time goes: each part of the step run alone, at the step's shapes.

The parts are the step's own functions (charrnn.recurrence, the model's parameters, the optimizer),
each compiled on its own and timed like `charrnn bench` times the whole step:

    embedding           the gather of the window's characters and its gradient (a scatter-add)
    forward loops       every layer's time loop forward (its products W_in^T x_t and W^T h per step,
                        one matmul where the cell sums them, and the cell's elementwise step)
    backward loops      every layer's reverse loop (the products' transposes per step): timed with the
                        weight gradients, less the weight gradients timed alone
    weight gradients    every layer's input and recurrent weight gradients, large matmuls after the loop
    output and loss     the output layer, softmax and cross-entropy, forward and backward
    optimizer           clipping, Adam's scaling, weight decay, the update (and the weights' average)

Each part computes its value as well as its gradients (`jax.value_and_grad`): with the gradients
alone XLA would drop a linear part's forward matmul. The whole step is timed too; what the parts
do not account for ("the rest": glue, layout copies, host work) is the whole less their sum
(negative where XLA does better on the whole program than on the parts apart). For the
left-to-right model without attention: other kinds are refused.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from charrnn.bench import bench_train, best_time
from charrnn.cells import make_cell
from charrnn.config import ModelConfig, TrainConfig
from charrnn.errors import ConfigError
from charrnn.kinds import cross_entropy
from charrnn.model import init_params
from charrnn.recurrence import _recurrence_backward, _recurrence_forward, feature_rows_gradient, project
from charrnn.step import fresh_average, make_optimizer, update_average

PARTS = (
    "embedding",
    "forward loops",
    "backward loops",
    "weight gradients",
    "output and loss",
    "optimizer",
)


def step_breakdown(model_config: ModelConfig, train_config: TrainConfig, repeats: int = 3) -> dict[str, Any]:
    """Seconds per training step of each part (PARTS), of the whole step, and the rest; each part's
    matmul GFLOP/s where it has matmuls."""
    if model_config.bidirectional or model_config.attention:
        field = "bidirectional" if model_config.bidirectional else "attention"
        raise ConfigError(field, "{name}: the step's breakdown is for the left-to-right model without attention")
    cfg, batch, length = model_config, train_config.batch_size, train_config.seq_len
    cell = make_cell(cfg.cell, cfg.dtype, train_config.unroll or None)
    params = init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (length, batch), dtype=np.int32))

    def normal(*shape: int) -> jax.Array:
        return jnp.asarray(rng.standard_normal(shape, np.float32))

    def timed(function, *args) -> float:
        return best_time(jax.jit(function), *args, repeats=repeats, inner=2)

    seconds: dict[str, float] = dict.fromkeys(PARTS, 0.0)
    embedding = params["embed"]["embedding"]
    d_x = normal(length, batch, cfg.embed_size)
    seconds["embedding"] = timed(
        jax.value_and_grad(lambda e, tokens, d_x: jnp.vdot(e[tokens], d_x)), embedding, tokens, d_x
    )
    for i in range(cfg.layers):
        weights = dict(params[f"layer{i}"])  # the layer's parameters by name, as the loop reads them
        width, hidden = weights["input_kernel"].shape[0], cfg.hidden_size
        x = normal(length, width, batch)  # feature-major, as the loop reads it
        carry = tuple(c.T for c in cell.zero_carry(batch, hidden))

        def forward(weights, x, carry):
            return _recurrence_forward(cell, weights, x, carry, None)

        seconds["forward loops"] += timed(forward, weights, x, carry)
        (hs, final), residuals = jax.jit(forward)(weights, x, carry)
        cotangents = (normal(length, hidden, batch), jax.tree.map(jnp.zeros_like, final))
        whole = timed(
            lambda residuals, cotangents: _recurrence_backward(cell, residuals, cotangents), residuals, cotangents
        )
        inputs = residuals[1]  # every step's [x_t; h], [D + H, T, B]
        d_pre = normal(cell.gates * hidden, length, batch).astype(inputs.dtype)

        def gradients(inputs, d_pre, width=width):
            if cell.sums_products:
                return feature_rows_gradient(inputs, d_pre, cell.compute_dtype)
            parts = (inputs[:width], inputs[width:])
            return [feature_rows_gradient(part, d_pre, cell.compute_dtype) for part in parts]

        seconds["weight gradients"] += (after := timed(gradients, inputs, d_pre))
        seconds["backward loops"] += whole - after
    h, targets = normal(batch, length, cfg.hidden_size), jnp.asarray(tokens.T)

    def loss(h, kernel, bias, targets):
        return cross_entropy(project(h, kernel, cfg.dtype) + bias, targets).mean()

    grads = jax.value_and_grad(loss, argnums=(0, 1, 2))
    seconds["output and loss"] = timed(grads, h, params["head_kernel"], params["head_bias"], targets)
    optimizer = make_optimizer(train_config)
    state, average = optimizer.init(params), fresh_average(params, train_config)
    gradients = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)

    def update(params, state, average, gradients):
        updates, state = optimizer.update(gradients, state, params)
        params = optax.apply_updates(params, jax.tree.map(lambda u: -1e-3 * u, updates))
        return params, state, update_average(average, params, train_config.ema, jnp.int32(100))

    seconds["optimizer"] = timed(update, params, state, average, gradients)
    step = bench_train(model_config, train_config, steps=5, repeats=repeats)["step_seconds"]
    flops = _matmul_flops(cfg, cell.gates, batch * length)
    return {
        "step_seconds": step,
        "parts": {
            name: {"seconds": s, "share": s / step} | ({"gflops": flops[name] / s / 1e9} if name in flops else {})
            for name, s in seconds.items()
        },
        "rest_seconds": step - sum(seconds.values()),
    }


def _matmul_flops(cfg: ModelConfig, gates: int, chars: int) -> dict[str, float]:
    """Matmul FLOPs per step of the parts that have matmuls (2 per multiply-add)."""
    width = gates * cfg.hidden_size
    inputs = cfg.embed_size + (cfg.layers - 1) * cfg.hidden_size
    products = (inputs + cfg.layers * cfg.hidden_size) * width * chars * 2  # W_in^T x_t and W^T h, all layers
    return {
        "forward loops": products,
        "backward loops": products,
        "weight gradients": products,
        "output and loss": 3 * cfg.hidden_size * cfg.vocab_size * chars * 2,
    }
