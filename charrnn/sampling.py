"""Text generation on the device, one compiled chunk at a time.

`sample_chunk` runs `chunk_size` steps of (sample a character -> embed -> recurrence -> logits)
as one `lax.scan`: nothing per character crosses into Python. `sample_stream` calls it
repeatedly, handing the recurrent state from chunk to chunk, and yields decoded text as soon as
each chunk is ready, while the next one is already being computed.
"""

import dataclasses
import functools
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from charrnn.config import ModelConfig, SampleOptions
from charrnn.model import CharRNN, initial_carry
from charrnn.vocab import Vocabulary


def pick(logits: jax.Array, key: jax.Array, options: SampleOptions) -> jax.Array:
    """Next-character ids [B] from logits [B, V] under `options` (static: compiled per option set)."""
    if options.temperature == 0:
        return jnp.argmax(logits, axis=-1)
    logits = logits.astype(jnp.float32) / options.temperature
    if 0 < options.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, options.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if options.top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # probability mass ranked above each entry
        kept = jnp.where(before < options.top_p, ordered, jnp.inf)
        logits = jnp.where(logits < kept.min(axis=-1, keepdims=True), -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1)


def matmul_operands(params, dtype: str):
    """Kernels cast to the matmul precision once, before the loop: one-stream sampling is bound by
    reading the weights, so each step should read them in the narrow type, not re-cast them."""
    if dtype == "float32":
        return params

    def cast(path, leaf):
        return leaf.astype(dtype) if str(getattr(path[-1], "key", "")).endswith("kernel") else leaf

    return jax.tree_util.tree_map_with_path(cast, params)


def reset_at(carry, token: jax.Array, reset_id: int | None):
    """Zero the state of streams about to read the document boundary, as training did."""
    if reset_id is None:
        return carry
    keep = (token != reset_id).astype(jnp.float32)
    return jax.tree.map(lambda c: (c * keep.reshape((-1,) + (1,) * (c.ndim - 1))).astype(c.dtype), carry)


@functools.lru_cache(maxsize=8)
def make_sample_chunk(
    model_config: ModelConfig,
    options: SampleOptions,
    chunk_size: int,
    reset_id: int | None = None,
    never: int | None = None,
) -> Callable:
    """Jitted (params, carry, token [B], key) -> (tokens [chunk, B], carry, last token, key).

    `reset_id`: the document boundary, where the state is zeroed as in training. `never` is an id
    that is never drawn (the unknown symbol of a ``--min-count`` vocabulary: it stands for many
    characters, so it is no text to show): its logit is -inf before picking."""
    model = CharRNN(model_config)

    def sample_chunk(params, carry, token, key):
        params = matmul_operands(params, model_config.dtype)
        prepared = model.apply({"params": params}, token.shape[0], method=CharRNN.step_operands)

        def body(state, _):
            carry, token, key = state
            carry = reset_at(carry, token, reset_id)
            key, subkey = jax.random.split(key)
            logits, carry = model.apply({"params": params}, token, carry, prepared, method=CharRNN.step)
            if never is not None:
                logits = logits.at[:, never].set(-jnp.inf)
            token = pick(logits, subkey, options).astype(jnp.int32)
            return (carry, token, key), token

        (carry, token, key), tokens = jax.lax.scan(body, (carry, token, key), None, length=chunk_size)
        return tokens, carry, token, key

    return jax.jit(sample_chunk)


@functools.lru_cache(maxsize=8)
def make_prime(model_config: ModelConfig, reset_id: int | None = None) -> Callable:
    """Jitted (params, carry, tokens [B, T]) -> carry: warm the state on the prime text."""
    model = CharRNN(model_config)

    def prime(params, carry, tokens):
        resets = None if reset_id is None else tokens == reset_id
        return model.apply({"params": params}, tokens, carry, resets=resets)[1]

    return jax.jit(prime)


class StopScanner:
    """Finds where each of `num` streamed samples ends: at the first occurrence, in the generated
    text, of any stop text. A stop text in `printed` is kept at the end of the sample (a stop at
    "\n\n" keeps the paragraph's end); one in `hidden` (the document boundary) is not.
    A stop text spanning two chunks is found: the last characters of each stream are kept."""

    def __init__(self, num: int, printed: tuple[str, ...] = (), hidden: tuple[str, ...] = ()) -> None:
        self.stops = [(text, True) for text in printed if text] + [(text, False) for text in hidden if text]
        self.keep = max((len(text) for text, _ in self.stops), default=1) - 1
        self.tails = [""] * num
        self.done = [False] * num

    def __bool__(self) -> bool:
        return bool(self.stops)

    def cut(self, pieces: list[str]) -> list[str]:
        """Each stream's piece up to (and with a printed stop text, including) its first stop; "" once done."""
        out = []
        for i, piece in enumerate(pieces):
            if self.done[i]:
                out.append("")
                continue
            tail = self.tails[i]
            window = tail + piece
            ends = []  # (index where the text ends, index where the sample ends)
            for text, printed in self.stops:
                at = window.find(text)
                if at >= 0:
                    ends.append((at + len(text), at + len(text) if printed else at))
            if ends:
                _, end = min(ends)
                self.done[i] = True
                out.append(window[len(tail) : max(end, len(tail))])
            else:
                out.append(piece)
                self.tails[i] = window[max(0, len(window) - self.keep) :] if self.keep else ""
        return out

    def all_done(self) -> bool:
        return bool(self.stops) and all(self.done)


def sample_stream(
    params,
    model_config: ModelConfig,
    vocab: Vocabulary,
    *,
    length: int,
    prime: str = "",
    options: SampleOptions = SampleOptions(),
    num: int = 1,
    seed: int = 0,
    chunk_size: int = 256,
    stop: tuple[str, ...] = (),
    boundary: str | None = None,
    stop_at_boundary: bool = True,
) -> Iterator[list[str]]:
    """Yield, chunk by chunk, the next piece of text of each of `num` samples (a list of `num` strings).

    The state is warmed on `prime` (whose characters must be in `vocab`); the first character is
    then drawn after the prime's last character, or after a newline when there is no prime.
    Each sample ends at the first `stop` text it generates (printed); once every sample has ended,
    no further chunk is computed. A model trained on documents (`boundary`: the character between
    them) starts a new document when there is no prime, has its state reset where it reads the
    boundary (as in training), and ends each sample at the boundary, which is not printed, unless
    `stop_at_boundary` is false.
    """
    reset_id = vocab.index.get(boundary) if boundary else None
    if num < 8 and jax.default_backend() == "cpu":
        # A few streams are matrix-vector products bound by reading the weights; XLA's CPU backend
        # ran those faster in float32 than with bf16 operands (docs/measurements.md, Speed), and
        # the master weights are float32 anyway.
        model_config = dataclasses.replace(model_config, dtype="float32")
    carry = initial_carry(model_config, num)
    if prime:
        ids = vocab.encode(prime).astype(np.int32)
        if len(ids) > 1:
            prime_state = make_prime(model_config, *(() if reset_id is None else (reset_id,)))
            carry = prime_state(params, carry, jnp.tile(ids[None, :-1], (num, 1)))
        start = int(ids[-1])
    else:
        start = reset_id if reset_id is not None else vocab.index.get("\n", 0)
    token = jnp.full((num,), start, jnp.int32)
    key = jax.random.key(seed)
    # Called with the same arguments as everywhere else for a plain text: one compiled program.
    extra = (reset_id, vocab.unknown_id)
    while extra and extra[-1] is None:
        extra = extra[:-1]
    sample_chunk = make_sample_chunk(model_config, options, chunk_size, *extra)

    scanner = StopScanner(num, stop, (boundary,) if reset_id is not None and stop_at_boundary else ())
    remaining = length
    pending = sample_chunk(params, carry, token, key) if remaining > 0 else None
    while pending is not None:
        tokens, carry, token, key = pending
        take = min(chunk_size, remaining)
        remaining -= take
        # Dispatch the next chunk before reading this one, so the device never waits for the host.
        pending = sample_chunk(params, carry, token, key) if remaining > 0 else None
        ids = np.asarray(tokens[:take]).T  # [num, take]
        pieces = [vocab.decode(row) for row in ids]
        if scanner:
            pieces = scanner.cut(pieces)
            if scanner.all_done():
                yield pieces
                return  # the chunk already dispatched is dropped; no other is started
        yield pieces
