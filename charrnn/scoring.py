"""Scoring text with a trained model: per-line log-probabilities, and the loss over a whole text.

Two ways to read text:

* **line by line** (`score_lines`): each line from a fresh state, its first character predicted
  after a newline (as sampling starts) and its own newline predicted last. Lines are independent,
  so they are batched: padded to a length bucket (a power of two), masked, and run as one compiled
  chunk of `rows × length` characters — the logits of every position are one matmul, and each step
  of the recurrence one matmul over the chunk's rows. A ragged file compiles a handful of programs (one per bucket
  and row count), and results come back in input order, streamed: a line is yielded as soon as it
  and every line before it are scored.
* **as one document** (`score_document`, `evaluate_text`): the state carried from line to line.

Lines arrive through a background reader, so a batch takes whatever lines are there: the first
lines of a slow pipe are scored (and printed) before the pipe is closed.

Longer than most modules, for a reason: line scores, a whole text's loss and the per-character
details share one bucketing and batching of the text.
"""

import functools
import math
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from charrnn.config import VAL_BURN_IN, ModelConfig, check_reading
from charrnn.errors import UsageError, VocabularyError
from charrnn.kinds import kind_of
from charrnn.model import CharRNN, initial_carry
from charrnn.step import evaluate, make_eval_step
from charrnn.vocab import Vocabulary

TOP = 5  # alternatives kept per character for the surprisal views
MIN_LENGTH = 8  # shortest length bucket
MAX_LENGTH = 512  # longest compiled chunk; longer lines are scored in several chunks with carried state
ROW_STEPS = (8, 64, 256)  # rows of a chunk: the first chunk is small (a quick first line), then larger
LOGITS_BYTES = 1 << 28  # cap on a chunk's float32 logits (rows × length × vocabulary × 4)
CHUNK_CHARS = 1 << 15  # cap on rows × length: each layer's states are H floats per character
POOL_LINES = 8192  # lines read ahead of the output, at most


@dataclass(frozen=True)
class CharDetails:
    """Per predicted character: its log-probability and the model's likeliest alternatives."""

    logprob: np.ndarray  # <f32>[n] natural log of the probability of each character that came
    top_ids: np.ndarray  # <int>[n, TOP] the likeliest characters at that position
    top_probs: np.ndarray  # <f32>[n, TOP] and their probabilities


@dataclass(frozen=True)
class LineScore:
    """The score of one line. `logprob` is the total natural-log probability of its `chars`
    predicted characters (its newline included; characters left out by ``unknown="skip"`` are
    counted in `oov` instead)."""

    number: int  # 1-based line number in the input
    text: str  # the line as given, without its newline
    logprob: float  # nats, <= 0
    chars: int
    oov: int = 0
    scored: str = ""  # the characters scored, newline included (`text` without the skipped ones)
    details: CharDetails | None = field(default=None, repr=False, compare=False)

    @property
    def bits_per_char(self) -> float:
        return -self.logprob / self.chars / math.log(2) if self.chars else math.nan

    def to_dict(self) -> dict[str, Any]:
        bits = self.bits_per_char
        return {
            "line": self.number,
            "bits_per_char": None if math.isnan(bits) else bits,
            "logprob": self.logprob,
            "chars": self.chars,
            "oov": self.oov,
            "text": self.text,
        }


@dataclass
class Summary:
    """Totals over scored lines, the way KenLM and SRILM report them (OOVs left out and counted)."""

    lines: int = 0
    chars: int = 0
    logprob: float = 0.0
    oov: int = 0

    def add(self, line: LineScore) -> None:
        self.lines += 1
        self.chars += line.chars
        self.logprob += line.logprob
        self.oov += line.oov

    @property
    def nats_per_char(self) -> float:
        return -self.logprob / self.chars if self.chars else math.nan

    @property
    def bits_per_char(self) -> float:
        return self.nats_per_char / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(self.nats_per_char) if self.chars else math.nan


@dataclass(frozen=True)
class EvalResult:
    """The loss over a whole text, state carried: `nats_per_char` over `chars` predictions."""

    nats_per_char: float
    chars: int
    oov: int = 0  # unknown characters left out (unknown="skip")

    @property
    def bits_per_char(self) -> float:
        return self.nats_per_char / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(self.nats_per_char)

    def to_dict(self) -> dict[str, Any]:
        return {
            "nats_per_char": self.nats_per_char,
            "bits_per_char": self.bits_per_char,
            "perplexity": self.perplexity,
            "chars": self.chars,
            "oov": self.oov,
        }


def start_id(vocab: Vocabulary) -> int:
    """The input before a text's first character: a newline, as in sampling without a prime."""
    return vocab.index.get("\n", 0)


@functools.lru_cache(maxsize=16)
def make_score_chunk(model_config: ModelConfig, details: bool) -> Callable:
    """Jitted (params, carry, inputs [B, T], targets [B, T]) -> (log p(target) [B, T], carry[, top ids,
    top probabilities [B, T, TOP]]). The embedding and the logits are whole-chunk operations
    (`CharRNN.__call__`); only the recurrence steps through time."""
    model = CharRNN(model_config)

    def score_chunk(params, carry, inputs, targets):
        logits, carry = model.apply({"params": params}, inputs, carry)
        logits = logits.astype(jnp.float32)
        log_norm = jax.nn.logsumexp(logits, axis=-1)
        logprob = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] - log_norm
        if not details:
            return logprob, carry
        top_logits, top_ids = jax.lax.top_k(logits, min(TOP, logits.shape[-1]))
        return logprob, carry, top_ids, jnp.exp(top_logits - log_norm[..., None])

    return jax.jit(score_chunk)


# -- reading ahead -----------------------------------------------------------------------------
_END = object()


class _ReadAhead:
    """Items of an iterable, read by a background thread: `take(block)` returns what is there now.

    An exception raised by the iterable (a decoding error, say) is re-raised by `take` in order.
    """

    def __init__(self, items: Iterable[Any], limit: int = POOL_LINES) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=limit)
        self.done = False
        self._thread = threading.Thread(target=self._read, args=(iter(items),), daemon=True)
        self._thread.start()

    def _read(self, items: Iterator[Any]) -> None:
        try:
            for item in items:
                self._queue.put((item, None))
        except BaseException as error:  # handed to the consumer, which raises it in order
            self._queue.put((_END, error))
            return
        self._queue.put((_END, None))

    def take(self, block: bool) -> list[Any]:
        """Everything available now (at least one item when `block`), until the end."""
        taken: list[Any] = []
        while not self.done:
            try:
                item, error = self._queue.get(block=block and not taken)
            except queue.Empty:
                break
            if item is _END:
                self.done = True
                if error is not None:
                    raise error
                break
            taken.append(item)
            if len(taken) >= POOL_LINES:
                break
        return taken


# -- line by line --------------------------------------------------------------------------------
@dataclass
class _Pending:
    number: int
    text: str
    ids: np.ndarray  # the line's ids followed by the newline's (when the vocabulary has one)
    oov: int
    scored: str


def _bucket(length: int) -> int:
    """Compiled chunk length for a line of `length` predictions: a power of two, at most MAX_LENGTH."""
    return min(MAX_LENGTH, max(MIN_LENGTH, 1 << max(0, length - 1).bit_length()))


def _max_rows(length: int, vocab_size: int) -> int:
    """Largest row count within CHUNK_CHARS whose logits fit in LOGITS_BYTES (a power of two, at least 1)."""
    fit = max(1, min(CHUNK_CHARS // length, LOGITS_BYTES // (4 * length * vocab_size)))
    return min(ROW_STEPS[-1], 1 << (fit.bit_length() - 1))


def unknown_characters(number: int, missing: list[str]) -> VocabularyError:
    shown = ", ".join(repr(c) for c in missing[:10])
    more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
    return VocabularyError(
        f"line {number} has characters the model never saw: {shown}{more} "
        "({unknown} leaves them out and counts them)",
        settings={"unknown": "skip"},
    )


class LineEncoder:
    """Text lines -> ids to predict, checking (or skipping) characters the model never saw."""

    def __init__(self, vocab: Vocabulary, unknown: str = "error") -> None:
        check_reading(unknown)
        self.vocab, self.unknown = vocab, unknown
        self.newline = "\n" if "\n" in vocab else ""

    def __call__(self, number: int, text: str) -> _Pending:
        if text.endswith("\n"):
            text = text[:-1]
        oov = 0
        if missing := self.vocab.missing(text):
            if self.unknown == "error":
                raise unknown_characters(number, missing)
            kept = "".join(c for c in text if c in self.vocab)
            oov = len(text) - len(kept)
        else:
            kept = text
        scored = kept + self.newline
        ids = self.vocab.encode(scored).astype(np.int32) if scored else np.zeros(0, np.int32)
        return _Pending(number, text, ids, oov, scored)


def score_lines(
    params: Any,
    model_config: ModelConfig,
    vocab: Vocabulary,
    lines: Iterable[str],
    *,
    unknown: str = "error",
    details: bool = False,
) -> Iterator[LineScore]:
    """Score each line from a fresh state, in input order, as soon as it and the lines before it are done.

    A character the model never saw raises VocabularyError naming it and the line, after every
    earlier line has been yielded (``unknown="skip"`` leaves such characters out and counts them).
    """
    encode = LineEncoder(vocab, unknown)
    reader = _ReadAhead(lines)
    start = start_id(vocab)
    buckets: dict[int, deque[_Pending]] = {}
    finished: dict[int, LineScore] = {}
    next_number, read, batches = 1, 0, 0
    failure: BaseException | None = None
    in_flight = None  # the batch dispatched to the device and not yet read back

    def pool_size() -> int:
        return sum(len(b) for b in buckets.values())

    while True:
        if failure is None and not reader.done and pool_size() < POOL_LINES:
            try:
                for text in reader.take(block=pool_size() == 0 and in_flight is None):
                    read += 1
                    entry = encode(read, text)
                    buckets.setdefault(_bucket(len(entry.ids)), deque()).append(entry)
            except Exception as error:  # stop reading; score and yield what came before it
                failure = error
        batch = None
        if pool_size():
            # Serve the bucket holding the oldest waiting line, so output is never held up for long.
            length = min((b for b in buckets if buckets[b]), key=lambda b: buckets[b][0].number)
            limit = min(ROW_STEPS[min(batches, len(ROW_STEPS) - 1)], _max_rows(length, model_config.vocab_size))
            queue_ = buckets[length]
            batch = [queue_.popleft() for _ in range(min(limit, len(queue_)))]
            batches += 1
            dispatched = (batch, _dispatch(params, model_config, batch, length, limit, start, details))
        else:
            dispatched = None
        if in_flight is not None:  # read the previous batch back while the device works on this one
            for score in _collect(*in_flight, details):
                finished[score.number] = score
            while next_number in finished:
                yield finished.pop(next_number)
                next_number += 1
        in_flight = dispatched
        if in_flight is None and (reader.done or failure is not None) and not pool_size():
            break
    if failure is not None:
        raise failure


def _dispatch(params, model_config, batch: list[_Pending], length: int, limit: int, start: int, details: bool):
    """Start scoring `batch` on the device: rows padded to a row step, lines to `length` (a line
    longer than that continues in further chunks, its state carried). Returns the device arrays."""
    rows = min(limit, next((r for r in ROW_STEPS if r >= len(batch)), ROW_STEPS[-1]))
    longest = max(1, max(len(p.ids) for p in batch))
    segments = -(-longest // length)
    inputs = np.zeros((rows, segments * length), np.int32)
    targets = np.zeros((rows, segments * length), np.int32)
    for row, pending in enumerate(batch):
        n = len(pending.ids)
        targets[row, :n] = pending.ids
        inputs[row, 0] = start
        inputs[row, 1:n] = pending.ids[: n - 1]
    score_chunk = make_score_chunk(model_config, details)
    carry = initial_carry(model_config, rows)
    outputs = []
    for s in range(segments):
        window = slice(s * length, (s + 1) * length)
        out = score_chunk(params, carry, inputs[:, window], targets[:, window])
        carry = out[1]
        outputs.append((out[0], *out[2:]))
    return outputs


def _collect(batch: list[_Pending], outputs, details: bool) -> Iterator[LineScore]:
    parts = [np.concatenate([np.asarray(o[k]) for o in outputs], axis=1) for k in range(len(outputs[0]))]
    logprob = parts[0]
    for row, pending in enumerate(batch):
        n = len(pending.ids)
        info = None
        if details:
            info = CharDetails(logprob[row, :n].copy(), parts[1][row, :n].copy(), parts[2][row, :n].copy())
        yield LineScore(
            pending.number,
            pending.text,
            float(logprob[row, :n].astype(np.float64).sum()),
            n,
            pending.oov,
            pending.scored,
            info,
        )


# -- as one document -----------------------------------------------------------------------------
DOCUMENT_CHUNK = 512  # characters per compiled step of the one-stream pass


def score_document(
    params: Any,
    model_config: ModelConfig,
    vocab: Vocabulary,
    lines: Iterable[str],
    *,
    unknown: str = "error",
    details: bool = False,
) -> Iterator[LineScore]:
    """Score lines as one text read from start to end, the state carried from line to line (the
    first character predicted after a newline). One stream, so it runs a character at a time
    through the recurrence: slower than `score_lines`. Pieces of a slow pipe are scored as they
    come, in exact power-of-two lengths (no padding, so the carried state stays exact)."""
    encode = LineEncoder(vocab, unknown)
    reader = _ReadAhead(lines)
    score_chunk = make_score_chunk(model_config, details)
    carry = initial_carry(model_config, 1)
    previous = start_id(vocab)
    waiting: deque[_Pending] = deque()  # lines read whose characters are not all handed out yet
    ids: deque[int] = deque()  # ids read and not yet scored
    scored: tuple[np.ndarray, ...] | None = None  # results for waiting[0] onwards
    read = 0
    failure: BaseException | None = None
    while True:
        if failure is None and not reader.done:
            try:
                for text in reader.take(block=not ids and not waiting):
                    read += 1
                    entry = encode(read, text)
                    waiting.append(entry)
                    ids.extend(entry.ids.tolist())
            except Exception as error:  # stop reading; score and yield what came before it
                failure = error
        if ids:
            size = DOCUMENT_CHUNK if len(ids) >= DOCUMENT_CHUNK else 1 << (len(ids).bit_length() - 1)
            targets = np.array([ids.popleft() for _ in range(size)], np.int32)
            inputs = np.concatenate([[previous], targets[:-1]]).astype(np.int32)
            previous = int(targets[-1])
            out = score_chunk(params, carry, inputs[None], targets[None])
            carry = out[1]
            piece = tuple(np.asarray(a)[0] for a in (out[0], *out[2:]))
            scored = piece if scored is None else tuple(np.concatenate(p) for p in zip(scored, piece, strict=True))
        offset, available = 0, 0 if scored is None else len(scored[0])
        while waiting and available - offset >= len(waiting[0].ids):  # every line whose characters are all scored
            entry = waiting.popleft()
            n = len(entry.ids)
            part = tuple(a[offset : offset + n] for a in scored) if scored is not None else _empty(details)
            offset += n
            info = CharDetails(*part) if details else None
            yield LineScore(
                entry.number, entry.text, float(part[0].astype(np.float64).sum()), n, entry.oov, entry.scored, info
            )
        if scored is not None:
            scored = tuple(a[offset:] for a in scored)
        if not ids and not waiting and (reader.done or failure is not None):
            break
    if failure is not None:
        raise failure


def _empty(details: bool) -> tuple[np.ndarray, ...]:
    return (np.zeros(0, np.float32), np.zeros((0, TOP), np.int32), np.zeros((0, TOP), np.float32))[
        : 3 if details else 1
    ]


# -- the loss over a whole text --------------------------------------------------------------------
def evaluate_ids(
    params: Any,
    model_config: ModelConfig,
    ids: np.ndarray,
    streams: int,
    window: int,
    reset_id: int | None = None,
    burn_in: int = VAL_BURN_IN,
) -> EvalResult:
    """Mean nats per predicted character over `ids` (every id after the first is predicted), cut
    into `streams` contiguous parts read side by side with carried state, each but the first after
    `burn_in` characters of the text before it (not counted): training's validation pass
    (`reset_id`: a corpus of documents' boundary, where the state is reset as in training)."""
    windows = kind_of(model_config).eval_windows(ids, streams, window, burn_in=burn_in)
    step = make_eval_step(model_config, reset_id)
    return EvalResult(evaluate(step, params, model_config, windows), len(ids) - 1)


def evaluate_text(
    params: Any,
    model_config: ModelConfig,
    vocab: Vocabulary,
    text: str,
    *,
    streams: int = 1,
    window: int = 256,
    unknown: str = "error",
) -> EvalResult:
    """The loss over `text` read from its start (its first character predicted after a newline),
    state carried; `streams` > 1 cuts it into that many parts read side by side (faster; each part
    reads the `VAL_BURN_IN` characters before it first, uncounted, so the figure stays close to
    one stream's). ``unknown="skip"`` leaves unknown characters out and counts them."""
    check_reading(unknown, streams)
    oov = 0
    if missing := vocab.missing(text):
        position = text.index(missing[0])
        if unknown == "error":
            line_start = text.rfind("\n", 0, position) + 1
            line_end = text.find("\n", position)
            line = text[line_start : len(text) if line_end < 0 else line_end + 1]  # with its newline
            raise unknown_characters(text.count("\n", 0, position) + 1, vocab.missing(line))
        kept = "".join(c for c in text if c in vocab)
        oov, text = len(text) - len(kept), kept
    if not text:
        raise UsageError("there is nothing to evaluate: the text is empty")
    ids = np.concatenate([[start_id(vocab)], vocab.encode(text).astype(np.int64)])
    result = evaluate_ids(params, model_config, ids, streams, window)
    return EvalResult(result.nats_per_char, result.chars, oov)
