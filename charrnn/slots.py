"""The compiled programs behind `serving.Engine`: a chunk of characters for every busy slot, each
with its own options and random key; a prompt read into a fresh state; a request placed in its slot.
Each is compiled once (per bucket of slots, for the chunk) whatever the requests ask."""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from charrnn.config import ModelConfig
from charrnn.model import CharRNN
from charrnn.sampling import matmul_operands, reset_at

TOP = 5  # alternatives a request may ask for per character (OpenAI's limit for `logprobs`)
PROMPT_PIECE = 256  # a prompt is read in pieces of this length: one compiled program for any prompt


def pick_each(logits: jax.Array, keys: jax.Array, temperature, top_p, top_k) -> jax.Array:
    """Next-character ids [B] from logits [B, V], each row with its own key and options (arrays [B]);
    row by row what `sampling.pick` does for one option set (temperature 0: the likeliest)."""
    vocab = logits.shape[-1]
    greedy = temperature == 0
    scaled = logits / jnp.where(greedy, 1.0, temperature)[:, None]
    ordered = jnp.sort(scaled, axis=-1)[:, ::-1]
    k = jnp.where((top_k > 0) & (top_k < vocab), top_k, vocab)
    kth = jnp.take_along_axis(ordered, (k - 1)[:, None], axis=-1)
    scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
    ordered = jnp.where(jnp.arange(vocab)[None, :] < k[:, None], ordered, -jnp.inf)
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # probability mass ranked above each entry
    kept = jnp.where(before < top_p[:, None], ordered, jnp.inf)
    scaled = jnp.where(scaled < kept.min(axis=-1, keepdims=True), -jnp.inf, scaled)
    drawn = jax.vmap(jax.random.categorical)(keys, scaled)
    return jnp.where(greedy, jnp.argmax(logits, axis=-1), drawn)


@functools.lru_cache(maxsize=8)
def make_slots_chunk(model_config: ModelConfig, chunk_size: int, reset_id: int | None, never: int | None) -> Callable:
    """Jitted (params, carry, token, keys, temperature, top_p, top_k, busy=B) -> (ids, logprobs,
    top ids, top logprobs [chunk, B, ...], carry, token, keys): `chunk_size` characters for the first
    B slots of the full state (the rest kept as they are), compiled once per bucket B."""
    model = CharRNN(model_config)
    top = min(TOP, model_config.vocab_size)

    def chunk(params, carry, token, keys, temperature, top_p, top_k, busy):
        params = matmul_operands(params, model_config.dtype)
        options = temperature[:busy], top_p[:busy], top_k[:busy]
        prepared = model.apply({"params": params}, busy, method=CharRNN.step_operands)

        def body(state, _):
            carry, token, keys = state
            carry = reset_at(carry, token, reset_id)
            split = jax.vmap(jax.random.split)(keys)
            keys, subkeys = split[:, 0], split[:, 1]
            logits, carry = model.apply({"params": params}, token, carry, prepared, method=CharRNN.step)
            logits = logits.astype(jnp.float32)
            if never is not None:
                logits = logits.at[:, never].set(-jnp.inf)
            token = pick_each(logits, subkeys, *options).astype(jnp.int32)
            logp = jax.nn.log_softmax(logits, axis=-1)
            chosen = jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]
            top_logp, top_ids = jax.lax.top_k(logp, top)
            return (carry, token, keys), (token, chosen, top_ids, top_logp)

        part = jax.tree.map(lambda a: a[:busy], (carry, token, jax.random.wrap_key_data(keys)))
        (part_carry, part_token, part_keys), out = jax.lax.scan(body, part, None, length=chunk_size)
        carry = jax.tree.map(lambda full, new: full.at[:busy].set(new), carry, part_carry)
        token = token.at[:busy].set(part_token)
        keys = keys.at[:busy].set(jax.random.key_data(part_keys))
        return (*out, carry, token, keys)

    return jax.jit(chunk, static_argnames="busy", donate_argnums=(1, 2, 3))


@functools.lru_cache(maxsize=8)
def make_prompt_reader(model_config: ModelConfig) -> Callable:
    """Jitted (params, carry, inputs [PROMPT_PIECE], targets, start) -> (log p(target), top ids, top
    log-probabilities, carry): the state read through one piece of a prompt, each target scored.
    The state is zeroed before position `start`, so a prompt's first piece, left-padded up to the
    full length, reads as if from a fresh state (`start` past the end for the following pieces)."""
    model = CharRNN(model_config)
    top = min(TOP, model_config.vocab_size)

    def read(params, carry, inputs, targets, start):
        resets = (jnp.arange(PROMPT_PIECE) == start)[None]
        logits, carry = model.apply({"params": params}, inputs[None], carry, resets=resets)
        logp = jax.nn.log_softmax(logits[0].astype(jnp.float32), axis=-1)
        top_logp, top_ids = jax.lax.top_k(logp, top)
        return jnp.take_along_axis(logp, targets[:, None], axis=-1)[:, 0], top_ids, top_logp, carry

    return jax.jit(read)


@functools.partial(jax.jit, donate_argnums=(0, 1, 2))
def place(carry, keys, token, slot_carry, key, first, slot):
    """The full state with slot `slot` set to a request's primed state, random key and first input."""
    carry = jax.tree.map(lambda full, one: jax.lax.dynamic_update_slice_in_dim(full, one, slot, 0), carry, slot_carry)
    return carry, keys.at[slot].set(key), token.at[slot].set(first)


def buckets(slots: int) -> list[int]:
    """The batch sizes the program runs at: 1, 4, 16, ... and `slots` itself."""
    sizes = [4**i for i in range(8) if 4**i < slots]
    return [*sizes, slots]
