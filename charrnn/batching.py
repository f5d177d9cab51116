"""Truncated-BPTT batches, the char-rnn way.

The training ids are cut into `batch_size` contiguous streams laid side by side; step k takes
window k (`seq_len` characters) of every stream. Row b of window k+1 continues row b of window k,
so the recurrent state at the end of one window is the right initial state for the next.

Every stream's state restarts from zero at each epoch's start, and, where an epoch is longer than
`restart_every` characters per stream, every that many characters besides (`restarts`): sampling,
scoring and each validation stream start from a zero state, and a model that never starts there
again (one epoch of a large corpus is thousands of windows) can come to read some beginnings into
a state it never leaves (docs/text-quality.md, "Restarts").
"""

from typing import NamedTuple

import numpy as np

from charrnn.errors import CorpusError


class Batch(NamedTuple):
    inputs: np.ndarray  # <int32>[batch, time]
    targets: np.ndarray  # <int32>[batch, time]: inputs shifted one character ahead


class StreamBatcher:
    """Windows over `batch_size` parallel streams of `ids`; window `k` of an epoch is `batch(k)`.

    `rows` picks the streams this process builds (its share of the global batch over several
    hosts); the streams themselves are those of the whole batch, so any split gives the same data.
    `extra`: characters each window reads past its last one (1: the last target; a bidirectional
    model's look-ahead), taken from the text that follows, which the next stream also reads.
    `restart_every`: characters between a stream's restarts within an epoch (0: none; see `restarts`).
    """

    def __init__(
        self,
        ids: np.ndarray,
        batch_size: int,
        seq_len: int,
        rows: slice = slice(None),
        extra: int = 1,
        restart_every: int = 0,
    ) -> None:
        stream_len = (len(ids) - extra) // batch_size  # the last stream's last window reads `extra` more
        self.windows_per_epoch = stream_len // seq_len
        if self.windows_per_epoch < 1:
            need = batch_size * seq_len + extra
            raise CorpusError(
                f"the training split has {len(ids)} characters, but {{batch_size}} × {{seq_len}} needs at "
                f"least {need}; use a longer corpus or smaller sizes",
                settings={"batch_size": batch_size, "seq_len": seq_len},
            )
        self.batch_size, self.seq_len, self.extra = batch_size, seq_len, extra
        # windows between a stream's restarts; none where the epoch's own restart comes first
        interval = max(1, restart_every // seq_len) if restart_every else 0
        self.restart_interval = interval if 0 < interval < self.windows_per_epoch else 0
        used = self.windows_per_epoch * seq_len
        # streams[b] = ids[b*stream_len : b*stream_len + used + extra]; a strided view, nothing copied.
        self.streams = np.lib.stride_tricks.as_strided(
            ids, shape=(batch_size, used + extra), strides=(ids.strides[0] * stream_len, ids.strides[0])
        )[rows]

    def chunk(self, window: int) -> np.ndarray:
        """<int32>[rows, seq_len + extra]: window `window` of every stream and what it reads past it."""
        start = window * self.seq_len
        return np.asarray(self.streams[:, start : start + self.seq_len + self.extra], dtype=np.int32)

    def restarts(self, window: int) -> np.ndarray:
        """<bool>[batch_size]: the streams (all of them, not only `rows`) whose state starts from zero
        before window `window` of an epoch. All at window 0; stream b also at every window k > 0 with
        k = b * interval // batch_size (mod interval), so that a few streams restart at each step and
        none reads more than `restart_interval` windows without."""
        if window == 0:
            return np.ones(self.batch_size, bool)
        interval = self.restart_interval
        if not interval:
            return np.zeros(self.batch_size, bool)
        phase = np.arange(self.batch_size) * interval // self.batch_size
        return (window - phase) % interval == 0

    def batch(self, window: int) -> Batch:
        chunk = self.chunk(window)
        return Batch(chunk[:, :-1], chunk[:, 1:])


def evaluation_windows(
    ids: np.ndarray, batch_size: int, seq_len: int, row_multiple: int = 1, burn_in: int = 0
) -> list[tuple[np.ndarray, ...]]:
    """Every target of `ids` exactly once, as masked windows over `batch_size` contiguous streams.

    Returns (inputs, targets, weights) triples of shape [batch, time]; padding has weight 0, so a
    validation pass covers the whole split with carried state and no character counted twice.
    A short split gets fewer streams, rounded up to `row_multiple` (the device count) with empty ones.

    Streams are a way to read the text in parallel, not a different measure: each stream but the
    first starts `burn_in` characters early, on the end of the stream before it, with weight 0, so
    its first counted characters are read with context, as when the text is read through in one
    stream: cold-started streams read worse than one stream, and with the context they read the
    same (docs/measurements.md, Text quality).
    """
    n_targets = len(ids) - 1
    batch_size, stream_len, early, padded = _streams(n_targets, batch_size, seq_len, row_multiple, burn_in)
    inputs = np.zeros((batch_size, padded), np.int32)
    targets = np.zeros((batch_size, padded), np.int32)
    weights = np.zeros((batch_size, padded), np.float32)
    for b in range(batch_size):
        start = b * stream_len
        length = max(0, min(stream_len, n_targets - start))
        if length == 0:
            continue  # an empty stream: all padding
        first = start - early[b]  # the first input read, context included
        span = early[b] + length
        inputs[b, :span] = ids[first : first + span]
        targets[b, :span] = ids[first + 1 : first + 1 + span]
        weights[b, early[b] : span] = 1.0
    return [
        (inputs[:, k : k + seq_len], targets[:, k : k + seq_len], weights[:, k : k + seq_len])
        for k in range(0, padded, seq_len)
    ]


def _streams(count: int, batch_size: int, seq_len: int, row_multiple: int, burn_in: int) -> tuple:
    """How evaluation reads `count` characters: (streams, characters per stream, context each
    stream reads before its first counted one, padded length: a whole number of windows)."""
    if count < 1:
        raise CorpusError("the validation split needs at least two characters")
    if burn_in < 0:
        raise ValueError(f"burn_in must be >= 0, not {burn_in}")
    batch_size = max(1, min(batch_size, count))
    batch_size = -(-batch_size // row_multiple) * row_multiple
    stream_len = -(-count // batch_size)
    early = [min(burn_in, b * stream_len) for b in range(batch_size)]  # context read before each stream
    return batch_size, stream_len, early, -(-(stream_len + max(early)) // seq_len) * seq_len


def cloze_windows(
    ids: np.ndarray, batch_size: int, seq_len: int, lookahead: int, row_multiple: int = 1, burn_in: int = 0
) -> list[tuple[np.ndarray, ...]]:
    """Every character of `ids` after the first exactly once, for a model that predicts each from both sides
    (charrnn.bidirectional): (chars, after, weights) triples, [batch, seq_len], [batch, lookahead]
    and [batch, seq_len]. The streams are those of `evaluation_windows` (each but the first reads
    `burn_in` characters of the one before with weight 0); each window's look-ahead reads on into
    the text that follows, and -1 marks positions past the text's end."""
    count = len(ids)
    if count < 2:  # the first character is context only
        raise CorpusError("the validation split needs at least two characters")
    batch_size, stream_len, early, padded = _streams(count, batch_size, seq_len, row_multiple, burn_in)
    chars = np.full((batch_size, padded + lookahead), -1, np.int32)
    weights = np.zeros((batch_size, padded), np.float32)
    for b in range(batch_size):
        start = b * stream_len
        length = max(0, min(stream_len, count - start))
        if length == 0:
            continue
        first = start - early[b]
        span = min(early[b] + length + lookahead, count - first)  # the text it reads, look-ahead included
        chars[b, :span] = ids[first : first + span]
        weights[b, early[b] : early[b] + length] = 1.0
    weights[0, 0] = 0.0  # the first character is context only, as for the left-to-right model
    return [
        (chars[:, k : k + seq_len], chars[:, k + seq_len : k + seq_len + lookahead], weights[:, k : k + seq_len])
        for k in range(0, padded, seq_len)
    ]
