"""The training step, the evaluation pass and the learning-rate schedule.

Everything here is a pure function of explicit state: `train_step(state, inputs, targets, lr)`
returns the next state. The recurrent carry lives in the state, so truncated BPTT needs nothing
from the caller but the next window; its gradient is stopped between windows.
"""

import functools
import math
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from charrnn.attention import cleared
from charrnn.cells import REGISTRY
from charrnn.config import ModelConfig, TrainConfig
from charrnn.kinds import kind_of
from charrnn.model import ModelCarry, build, init_params, initial_carry
from charrnn.placement import Placement


class TrainState(struct.PyTreeNode):
    """All that training carries from one step to the next, and all that a checkpoint must hold."""

    step: jax.Array  # <int32>[]
    params: Any
    opt_state: Any
    carry: ModelCarry  # recurrent state at the end of the previous window
    key: jax.Array  # <uint32>[2] raw PRNG key data; per-step keys are fold_in(key, step)
    ema: Any = None  # moving average of params when TrainConfig.ema > 0 (else None: no leaves)

    @property
    def weights(self) -> Any:
        """The parameters a run is judged and sampled by: the moving average when there is one."""
        return self.params if self.ema is None else self.ema


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping, Adam's scaling, then decoupled weight decay (AdamW: `weight_decay` × the
    parameter added to the update) of the weight matrices, not of biases, gains or peepholes. The
    learning rate is applied by `train_step`, so the decay follows the schedule like the step does.

    Keeping the rate outside the optimizer lets one compiled step serve any schedule, including a
    time budget whose length is only known as the run goes. Without decay the chain is the two
    transformations runs written before it saved (their optimizer state loads unchanged).
    """
    transforms = [optax.clip_by_global_norm(config.grad_clip), optax.scale_by_adam(b2=config.beta2)]
    if config.weight_decay:
        transforms.append(optax.add_decayed_weights(config.weight_decay, mask=weight_matrices))
    return optax.chain(*transforms)


def weight_matrices(params: Any) -> Any:
    """True for the leaves that weight decay shrinks: the matrices (embedding, input and recurrent
    weights, output layer). Biases, norm gains and peepholes set offsets and scales, which decay
    would pull towards zero; leaving them out is the usual AdamW practice (decaying them too was
    not measured)."""
    return jax.tree.map(lambda leaf: leaf.ndim >= 2, params)


def learning_rate(config: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over `warmup_steps`, then cosine decay to `min_lr_fraction` as progress goes 0 -> 1."""
    warmup = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return config.learning_rate * warmup * (config.min_lr_fraction + (1.0 - config.min_lr_fraction) * cosine)


@functools.partial(jax.jit, static_argnums=(0, 1))
def create_state(model_config: ModelConfig, train_config: TrainConfig) -> TrainState:
    """A fresh state: parameters and dropout keys from `train_config.seed` alone. Compiled: run
    eagerly, each of its many small operations would be dispatched and compiled on its own."""
    key = jax.random.key(train_config.seed)
    init_key, run_key = jax.random.split(key)
    params = init_params(model_config, init_key)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=make_optimizer(train_config).init(params),
        carry=initial_carry(model_config, train_config.batch_size),
        key=jax.random.key_data(run_key),
        ema=fresh_average(params, train_config),
    )


def fresh_average(params: Any, train_config: TrainConfig) -> Any:
    """The moving average's starting point (a copy of `params`), or None when it is off."""
    return jax.tree.map(jnp.copy, params) if train_config.ema else None


def update_average(average: Any, params: Any, decay: float, step: jax.Array) -> Any:
    """One step of the weights' exponential moving average. The decay ramps up as
    min(decay, (1 + step) / (10 + step)), so early steps are not dominated by the initial weights."""
    if average is None:
        return None
    step = step.astype(jnp.float32)
    rate = 1.0 - jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return jax.tree.map(lambda a, p: a + rate * (p - a), average, params)


def placed_state(model_config: ModelConfig, train_config: TrainConfig, placement: Placement) -> TrainState:
    """`create_state` computed straight into the placement's shardings (nothing gathered on one device)."""
    shardings = {} if placement.size == 1 else {"out_shardings": state_shardings(model_config, train_config, placement)}
    return jax.jit(lambda: create_state(model_config, train_config), **shardings)()


def abstract_state(model_config: ModelConfig, train_config: TrainConfig, placement: Placement) -> TrainState:
    """Shapes, dtypes and shardings of the state, without computing it (the target of a restore)."""
    shapes = jax.eval_shape(lambda: create_state(model_config, train_config))
    if placement.size == 1:
        return shapes
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        shapes,
        placement.state_shardings(shapes),
    )


def state_shardings(model_config: ModelConfig, train_config: TrainConfig, placement: Placement) -> TrainState:
    return placement.state_shardings(jax.eval_shape(lambda: create_state(model_config, train_config)))


def placed_carry(model_config: ModelConfig, batch_size: int, placement: Placement) -> ModelCarry:
    """A zero carry with its rows split over the placement's devices."""
    if placement.size == 1:
        return initial_carry(model_config, batch_size)
    return jax.jit(lambda: initial_carry(model_config, batch_size), out_shardings=placement.carry)()


def restarted(model_config: ModelConfig, carry: ModelCarry, fresh: jax.Array) -> ModelCarry:
    """`carry` with the streams where `fresh` (bool [batch], or one bool for them all) start afresh:
    a zero state and an empty attention memory (batching.StreamBatcher.restarts)."""
    batch = jax.tree.leaves(carry)[0].shape[0]
    zero = initial_carry(model_config, batch)
    start = (*zero[:-1], cleared(carry[-1])) if model_config.attention else zero
    fresh = jnp.asarray(fresh)

    def pick(z: jax.Array, c: jax.Array) -> jax.Array:
        return jnp.where(fresh.reshape(fresh.shape + (1,) * (c.ndim - fresh.ndim)), z, c)

    return jax.tree.map(pick, start, carry)


def make_train_step(
    model_config: ModelConfig,
    train_config: TrainConfig,
    placement: Placement | None = None,
    reset_id: int | None = None,
) -> Callable:
    """The jitted step (state, *window, learning_rate) -> (state, metrics); the window's arrays are
    those of the model's kind (charrnn.kinds): (inputs, targets), or (chars, after).

    Forward, backward, clipping and the update are one XLA program; the old state's buffers are
    donated. On several devices (`placement`) the inputs are sharded along the batch axis and the
    output state is pinned to the placement's shardings; XLA adds the gradient all-reduce. On one
    device the program is the plain single-device one. `reset_id`: the document boundary's id, for
    a corpus of documents.
    """
    split = placement is not None and placement.size > 1
    train_step = _train_step(model_config, train_config, reset_id, split_batch=split)
    if not split:
        return jax.jit(train_step, donate_argnums=0)
    shardings = state_shardings(model_config, train_config, placement)
    return jax.jit(train_step, donate_argnums=0, out_shardings=(shardings, placement.replicated))


STEPS_PER_CALL = 4  # what `fit` runs per call of `make_train_steps` where it can (docs/measurements.md, Speed)


def make_train_steps(model_config: ModelConfig, train_config: TrainConfig, reset_id: int | None = None) -> Callable:
    """Several training steps as one jitted program, on one device: (state, *windows, learning_rates,
    fresh) -> (state, metrics), where each window array, the rates and `fresh` are stacked along a
    leading axis, one entry per step, and so are the metrics. fresh[i]: which streams restart before
    step i (bool [batch], or one bool for all), their state zeroed as `fit` does between single steps
    (`restarted`).

    The steps are the single step's, run by a loop inside the program: the same numbers (tests), with
    one call, one set of temporaries and one dispatch for them all. XLA's CPU runtime maps, zeroes and
    unmaps a program's temporaries at every call, much of a small step's time without huge pages
    (docs/measurements.md, Speed).
    """
    train_step = _train_step(model_config, train_config, reset_id)

    def train_steps(state: TrainState, first: jax.Array, second: jax.Array, lrs: jax.Array, fresh: jax.Array):
        def body(state, inputs):
            first, second, lr, fresh = inputs
            carry = restarted(model_config, state.carry, fresh)
            return train_step(state.replace(carry=carry), first, second, lr)

        return jax.lax.scan(body, state, (first, second, lrs, fresh))

    return jax.jit(train_steps, donate_argnums=0)


def _train_step(
    model_config: ModelConfig, train_config: TrainConfig, reset_id: int | None, split_batch: bool = False
) -> Callable:
    """The training step as a pure function, not yet compiled (see `make_train_step`)."""
    unroll = train_config.unroll or REGISTRY[model_config.cell].default_unroll
    model = build(model_config, unroll=unroll, split_batch=split_batch)
    kind = kind_of(model_config)
    optimizer = make_optimizer(train_config)

    def loss_fn(params, carry, window, key):
        nats, carry = kind.nats(model, params, carry, window, reset_id, train=True, rngs={"dropout": key})
        return nats.mean(), carry

    def train_step(state: TrainState, first: jax.Array, second: jax.Array, lr: jax.Array):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
        (loss, carry), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.carry, (first, second), key
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = jax.tree.map(lambda p, u: p - lr * u, state.params, updates)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            carry=jax.lax.stop_gradient(carry),
            ema=update_average(state.ema, params, train_config.ema, state.step),
        )
        return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}

    return train_step


def make_eval_step(model_config: ModelConfig, reset_id: int | None = None) -> Callable:
    """The jitted step (params, carry, *window, weights) -> (carry, summed nats, summed weight), for
    the windows of the model's kind (`kind_of(model_config).eval_windows`)."""
    model, kind = build(model_config), kind_of(model_config)

    def eval_step(params, carry, first, second, weights):
        nats, carry = kind.nats(model, params, carry, (first, second), reset_id)
        return carry, jnp.sum(nats * weights), jnp.sum(weights)

    return jax.jit(eval_step)


def evaluate(
    eval_step: Callable,
    params: Any,
    model_config: ModelConfig,
    windows: Iterable[tuple],
    placement: Placement | None = None,
) -> float:
    """Mean nats per character over all `windows` (from the kind's `eval_windows`), state carried across them.

    With a `placement`, every window's rows are split over its devices (every process holds the
    whole windows; each feeds its own rows)."""
    windows = list(windows)
    batch_size = windows[0][0].shape[0]
    if placement is None:
        carry = initial_carry(model_config, batch_size)
    else:
        carry = placed_carry(model_config, batch_size, placement)
        windows = [tuple(placement.put_global(part) for part in window) for window in windows]
    total, count = jnp.zeros(()), jnp.zeros(())
    for inputs, targets, weights in windows:
        carry, nats, weight = eval_step(params, carry, inputs, targets, weights)
        total, count = total + nats, count + weight
    return float(total / count)  # the only host sync of the pass
