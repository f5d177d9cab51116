"""The kinds of model, and how each reads a window of text: one small class per kind.

Training, validation and evaluation ask the kind, never the config, how to cut the text and what
a window's loss is, so a new kind of model touches this file and its module only:

* `LeftToRight` (CharRNN): each character from those before it. Windows are (inputs, targets).
* `Bidirectional` (BiCharRNN): each character from both sides. Windows are (chars, after).
"""

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from charrnn.batching import cloze_windows, evaluation_windows
from charrnn.config import ModelConfig


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-character negative log-likelihood in nats: [B, T, V], [B, T] -> [B, T]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def document_resets(inputs: jax.Array, reset_id: int | None) -> jax.Array | None:
    """Where the recurrent state is zeroed before reading inputs[:, t]: at the document boundary
    (so the next document is read from a fresh state), or nowhere for a single text."""
    return None if reset_id is None else inputs == reset_id


@dataclass(frozen=True)
class LeftToRight:
    """The language model: writes (sample), scores and evaluates left to right."""

    config: ModelConfig

    @property
    def extra(self) -> int:
        """Characters a training window reads past its end: the last target."""
        return 1

    def split(self, chunk: np.ndarray) -> tuple[np.ndarray, ...]:
        """A stream chunk [B, T + extra] -> the window's arrays: (inputs, targets)."""
        return chunk[:, :-1], chunk[:, 1:]

    def nats(
        self, model: nn.Module, params: Any, carry: Any, window: tuple, reset_id: int | None, **apply: Any
    ) -> tuple[jax.Array, Any]:
        """(nats of every predicted character [B, T], carry after the window)."""
        inputs, targets = window
        logits, carry = model.apply(
            {"params": params}, inputs, carry, resets=document_resets(inputs, reset_id), **apply
        )
        return cross_entropy(logits, targets), carry

    def eval_windows(self, ids: np.ndarray, batch_size: int, seq_len: int, rows: int = 1, burn_in: int = 0) -> list:
        """Every target of `ids` once: (inputs, targets, weights) triples."""
        return evaluation_windows(ids, batch_size, seq_len, rows, burn_in)


@dataclass(frozen=True)
class Bidirectional(LeftToRight):
    """The cloze model: judges each character given both sides (`charrnn check`); no sampling or
    scoring, since it defines no left-to-right likelihood."""

    @property
    def extra(self) -> int:
        return self.config.lookahead

    def split(self, chunk: np.ndarray) -> tuple[np.ndarray, ...]:
        """-> (chars, after): the characters to predict and the look-ahead that follows them."""
        seq_len = chunk.shape[1] - self.config.lookahead
        return chunk[:, :seq_len], chunk[:, seq_len:]

    def nats(self, model, params, carry, window, reset_id, **apply):
        """The cloze's nats. When training a model with `direction_heads`, their gradient is added
        and their loss is not: the figure reported stays the cloze (the stacks get their gradient
        scaled by `direction_weight`, see BiCharRNN.__call__)."""
        chars, after = window
        train = apply.get("train", False)  # training windows never reach past the text
        directions = train and self.config.direction_heads
        out = model.apply(
            {"params": params}, chars, after, carry, reset_id=reset_id, padded=not train, directions=directions, **apply
        )
        targets = jnp.maximum(chars, 0)
        nats = cross_entropy(out[0], targets)
        if directions:
            one_way = sum(cross_entropy(logits, targets) for logits in out[2])
            nats = nats + (one_way - jax.lax.stop_gradient(one_way))
        return nats, out[1]

    def eval_windows(self, ids, batch_size, seq_len, rows=1, burn_in=0):
        """Every character of `ids` once: (chars, after, weights) triples."""
        return cloze_windows(ids, batch_size, seq_len, self.config.lookahead, rows, burn_in)


def kind_of(config: ModelConfig) -> LeftToRight:
    """The kind of model `config` describes."""
    return (Bidirectional if config.bidirectional else LeftToRight)(config)
