"""Finding characters that do not fit: `charrnn check`, with a bidirectional model.

Every character is judged given both sides (charrnn.bidirectional): the text is read as training
read its windows (the forward state carried, the backward stack reading each window plus its
look-ahead), in many streams side by side, with a newline before and after the text as context.
A place is reported when an edit there would make the text more likely by over `threshold` nats.

From the one reading, each character gets three estimates (see `Cloze.edit_estimates`): what
replacing it, deleting it, or inserting a character before it would gain. A run of adjacent
characters whose best estimate passes `CANDIDATE_FRACTION` of the threshold is one candidate,
and the edits near it are tried: the model's likeliest replacements, deleting the character,
inserting the likeliest characters before it, swapping it with a neighbour. Each edit is judged by
how much it raises the summed cloze log-probability of the characters around it (a
pseudo-log-likelihood, read from a fresh state over a short snippet, so the original and every
edit are read alike); the best is the suggestion, and the candidate is reported if it gains more
than the threshold. Rescoring costs in proportion to the candidates, not to the text.
"""

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from charrnn.batching import cloze_windows
from charrnn.config import VAL_BURN_IN, ModelConfig
from charrnn.errors import UsageError
from charrnn.vocab import Vocabulary

THRESHOLD = 8.0  # nats an edit must gain to be reported: the default, by measurement (docs/checking.md)
CANDIDATE_FRACTION = 0.5  # places whose estimated gain passes this share of the threshold are rescored
TOP = 5  # likeliest characters kept per position
SNIPPET = 12  # characters of context on each side of an edit when edits are compared
AROUND = 3  # the characters on each side of an edit whose log-probabilities are summed
EDIT_MARGIN = 1.0  # nats an edit must gain over the text as it is to be suggested
STREAMS = 64  # streams read side by side (the bench shape's batch)
SNIPPET_ROWS = 256  # edits judged per compiled call


@dataclass(frozen=True)
class Cloze:
    """Per character x_t of a text: log p(x_t | both sides), the likeliest characters there, and
    what the model says of a character missing or extra next to it. A "hole" is the context with
    x_t and x_t+1 both taken out, asked for the one character that fills it (so x_t alone, were
    x_t+1 extra, or x_t+1 alone, were x_t extra); a "gap" is the context with nothing taken out,
    asked for a character between x_t-1 and x_t. -inf where a window's edge leaves it unknown."""

    logprob: np.ndarray  # <f32>[n]
    top_ids: np.ndarray  # <int>[n, TOP]
    top_probs: np.ndarray  # <f32>[n, TOP]
    hole_first: np.ndarray | None = None  # <f32>[n] log p(x_t fills the hole of x_t, x_t+1)
    hole_second: np.ndarray | None = None  # <f32>[n] log p(x_t+1 fills it)
    gap_logprob: np.ndarray | None = None  # <f32>[n] log p of the likeliest character between x_t-1 and x_t
    gap_ids: np.ndarray | None = None  # <int>[n] that character

    @property
    def gap(self) -> np.ndarray:
        """log p(best guess) - log p(char), >= 0: how far below the best guess each character is."""
        return np.maximum(np.log(self.top_probs[:, 0]) - self.logprob, 0.0)

    def sliced(self, part: slice) -> "Cloze":
        return Cloze(*(None if a is None else a[part] for a in dataclasses.astuple(self)))

    def edit_estimates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Nats each kind of edit at each character would gain, estimated from this one reading:
        replacing it (its gap to the best guess), deleting it (its neighbours read through the
        hole, minus the three characters as they are), inserting a character before it (the gap's
        likeliest character, minus its two neighbours as they are: optimistic, so checked by
        rescoring before it is reported)."""
        lp = self.logprob.astype(np.float64)
        before = np.concatenate([[-np.inf], lp[:-1]])
        after = np.concatenate([lp[1:], [-np.inf]])
        hole_before = np.concatenate([[-np.inf], self.hole_first[:-1]])  # x_t-1 read through the hole of x_t-1, x_t
        with np.errstate(invalid="ignore"):  # -inf - -inf where a window's edge leaves a term unknown
            delete = hole_before + self.hole_second - before - lp - after
            insert = self.gap_logprob - before - lp
        return self.gap, np.nan_to_num(delete, nan=-np.inf), np.nan_to_num(insert, nan=-np.inf)


@dataclass(frozen=True)
class Finding:
    """A character that does not fit, and what the model would write instead."""

    offset: int  # index of the character in the text
    line: int  # 1-based
    column: int  # 1-based, in characters
    char: str  # the character found
    prob: float  # the model's probability of it there
    best: str  # the model's likeliest character there
    best_prob: float
    edit: str  # "replace", "delete", "insert" (before `char`), "swap" (with the next character), or "" (none better)
    suggestion: str = ""  # the text the edit writes in place of `char` ("" for a deletion)
    gain: float = 0.0  # nats of cloze log-probability the edit gains around it
    span: tuple[int, int] = (0, 0)  # the characters of the text the edit replaces by `suggestion`
    alternatives: tuple[tuple[str, float], ...] = field(default=())  # likeliest characters there, with probabilities

    def to_dict(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "column": self.column,
            "offset": self.offset,
            "char": self.char,
            "prob": self.prob,
            "edit": self.edit or None,
            "suggestion": self.suggestion if self.edit else None,
            "gain": self.gain,
            "span": list(self.span) if self.edit else None,
            "alternatives": [{"char": c, "prob": p} for c, p in self.alternatives],
        }


@functools.lru_cache(maxsize=16)
def make_cloze_chunk(model_config: ModelConfig, reset_id: int | None) -> Callable:
    """Jitted (params, carry, chars [B, T], after [B, L]) -> (carry, log p(char) [B, T], top ids and
    probabilities [B, T, TOP], then [B, T] each: the hole's log-probabilities of x_t and x_t+1, the
    gap's likeliest character's log-probability and id; see `Cloze`)."""
    from charrnn.bidirectional import BiCharRNN

    model = BiCharRNN(model_config)

    def chunk(params, carry, chars, after):
        left, right, carry = model.apply({"params": params}, chars, after, carry, reset_id=reset_id, method="sides")

        def log_probs(left, right):
            logits = model.apply({"params": params}, jnp.concatenate([left, right], axis=-1), method="head")
            return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)

        def pick(logprobs, ids):
            return jnp.take_along_axis(logprobs, jnp.maximum(ids, 0)[..., None], axis=-1)[..., 0]

        def pad(values, where):  # [B, T-1] -> [B, T], -inf where the window's edge leaves it unknown
            edge = jnp.full(values[:, :1].shape, -jnp.inf, values.dtype)
            return jnp.concatenate([values, edge] if where == "end" else [edge, values], axis=1)

        logprobs = log_probs(left, right)
        top_logprobs, top_ids = jax.lax.top_k(logprobs, min(TOP, logprobs.shape[-1]))
        hole = log_probs(left[:, :-1], right[:, 1:])  # x_k and x_k+1 taken out
        gap = log_probs(left[:, 1:], right[:, :-1])  # nothing taken out: between x_t-1 and x_t
        return (
            carry,
            pick(logprobs, chars),
            top_ids,
            jnp.exp(top_logprobs),
            pad(pick(hole, chars[:, :-1]), "end"),
            pad(pick(hole, chars[:, 1:]), "end"),
            pad(gap.max(axis=-1), "start"),
            jnp.pad(gap.argmax(axis=-1), ((0, 0), (1, 0))),  # no gap before a window's first character: id 0
        )

    return jax.jit(chunk)


def cloze(
    params: Any,
    model_config: ModelConfig,
    ids: np.ndarray,
    *,
    window: int,
    streams: int = STREAMS,
    reset_id: int | None = None,
) -> Cloze:
    """The cloze log-probability of every id of `ids` after the first (the first is context only),
    read as training reads: `streams` side by side, windows of `window`, the model's look-ahead."""
    from charrnn.model import initial_carry

    lookahead = model_config.lookahead
    windows = cloze_windows(ids, streams, window, lookahead, burn_in=VAL_BURN_IN)
    where = cloze_windows(np.arange(len(ids)), streams, window, lookahead, burn_in=VAL_BURN_IN)  # positions
    step = make_cloze_chunk(model_config, reset_id)
    carry = initial_carry(model_config, windows[0][0].shape[0])
    n = len(ids)
    columns = [np.zeros(n, np.float32), np.zeros((n, min(TOP, model_config.vocab_size)), np.int32)]
    columns += [
        np.zeros(columns[1].shape, np.float32),
        *(np.zeros(n, np.float32) for _ in range(3)),
        np.zeros(n, np.int32),
    ]
    outputs = []
    for (chars, after, weights), (positions, _, _) in zip(windows, where, strict=True):
        carry, *out = step(params, carry, chars, after)  # dispatched ahead; fetched below
        outputs.append((out, positions, weights))
    for out, positions, weights in outputs:
        counted = weights > 0
        at = positions[counted]
        for column, values in zip(columns, out, strict=True):
            column[at] = np.asarray(values)[counted]
    return Cloze(*columns).sliced(slice(1, None))


def _edits(text: str, i: int, alternatives: list[str], inserted: list[str]) -> Iterator[tuple[str, str, int, int]]:
    """(edit, suggestion, start, end): the edits tried at text[i], replacing text[start:end]."""
    char = text[i]
    for c in alternatives[:3]:
        if c != char:
            yield "replace", c, i, i + 1
    yield "delete", "", i, i + 1
    for c in dict.fromkeys(inserted):
        yield "insert", c + char, i, i + 1
    if i + 1 < len(text) and text[i + 1] != char:
        yield "swap", text[i + 1] + char, i, i + 2
    if i > 0 and text[i - 1] != char:
        yield "swap", char + text[i - 1], i - 1, i + 1


class Checker:
    """A bidirectional model's check of texts (`check`): the compiled programs are kept between texts."""

    def __init__(
        self,
        params: Any,
        model_config: ModelConfig,
        vocab: Vocabulary,
        *,
        window: int = 32,
        boundary: str | None = None,
    ) -> None:
        if not model_config.bidirectional:
            raise UsageError(
                "checking text needs a bidirectional model (train one with --bidirectional); "
                "a left-to-right model's surprisal view is `charrnn score --show`"
            )
        self.params, self.config, self.vocab, self.window = params, model_config, vocab, window
        self.reset_id = vocab.index.get(boundary) if boundary else None
        self.newline = vocab.index.get("\n", 0)
        self._snippets = jax.jit(self._snippet_logprobs)

    def encode(self, text: str) -> np.ndarray:
        """The ids of `text` between two newlines (their context); unknown characters read as the
        vocabulary's unknown character, or a newline."""
        fallback = self.vocab.unknown_id if self.vocab.unknown_id is not None else self.newline
        body = np.fromiter((self.vocab.index.get(c, fallback) for c in text), np.int32, count=len(text))
        return np.concatenate([[self.newline], body, [self.newline]]).astype(np.int32)

    def cloze(self, text: str) -> Cloze:
        """Every character of `text`, judged given both sides."""
        if not text:
            return Cloze(np.zeros(0, np.float32), np.zeros((0, TOP), np.int32), np.zeros((0, TOP), np.float32))

        full = cloze(self.params, self.config, self.encode(text), window=self.window, reset_id=self.reset_id)
        return full.sliced(slice(None, -1))  # the closing newline is context

    def check(
        self, text: str, threshold: float = THRESHOLD, *, suggest: bool = True, judged: Cloze | None = None
    ) -> list[Finding]:
        """The places in `text` where an edit would make it more likely by over `threshold` nats
        (see the module's docstring), with that edit (left out if not `suggest`); characters the
        model never saw are always reported. `judged`: the text's `cloze`, if the caller has it."""
        if not (threshold >= 0 and math.isfinite(threshold)):
            raise UsageError(f"{{threshold}} must be a number >= 0, not {threshold}", settings={"threshold": threshold})
        if not text:
            return []
        judged = self.cloze(text) if judged is None else judged
        replace, delete, insert = judged.edit_estimates()
        unknown = np.array([c not in self.vocab for c in text])
        estimate = np.maximum(np.maximum(replace, delete), insert) + np.where(unknown, np.inf, 0.0)
        flagged = estimate > threshold * CANDIDATE_FRACTION
        spots = []  # the likeliest place of each run of flagged characters
        i = 0
        while i < len(text):
            if flagged[i]:
                j = i
                while j + 1 < len(text) and flagged[j + 1]:
                    j += 1
                spots.append(i + int(np.argmax(estimate[i : j + 1])))
                i = j + 1
            else:
                i += 1
        chars = self.vocab.chars
        alternatives = {s: [chars[k] for k in judged.top_ids[s]] for s in spots}
        inserted = {s: [chars[judged.gap_ids[s]], *alternatives[s][:1]] for s in spots}
        edits = self._best_edits(text, spots, alternatives, inserted)  # confirms deletions and insertions
        spots = [s for s in spots if unknown[s] or edits.get(s, ("", "", 0.0))[2] > threshold]
        edits = edits if suggest else {}
        line_starts = np.flatnonzero(np.frombuffer(text.encode("utf-32-le"), np.uint32) == 10) + 1
        findings = []
        for s in spots:
            line = int(np.searchsorted(line_starts, s, side="right"))
            column = s - (int(line_starts[line - 1]) if line else 0) + 1
            edit, suggestion, gain, span = edits.get(s, ("", "", 0.0, (s, s + 1)))
            findings.append(
                Finding(
                    offset=s,
                    line=line + 1,
                    column=column,
                    char=text[s],
                    prob=0.0 if unknown[s] else float(np.exp(judged.logprob[s])),
                    best=alternatives[s][0],
                    best_prob=float(judged.top_probs[s, 0]),
                    edit=edit,
                    suggestion=suggestion,
                    gain=gain,
                    span=span,
                    alternatives=tuple(
                        (chars[k], float(p)) for k, p in zip(judged.top_ids[s], judged.top_probs[s], strict=True)
                    ),
                )
            )
        return findings

    # -- which edit ----------------------------------------------------------------------------
    def _best_edits(self, text: str, spots: list[int], alternatives: dict, inserted: dict) -> dict[int, tuple]:
        rows, owners = [], []  # snippets: each spot's original first, then its edits
        for s in spots:
            lo, hi = max(0, s - SNIPPET), min(len(text), s + SNIPPET + 1)
            rows.append((s, "", "", text[lo:hi], s - lo, s - lo + 1, (s, s + 1)))
            for edit, suggestion, start, end in _edits(text, s, alternatives[s], inserted[s]):
                edited = text[lo:start] + suggestion + text[end:hi]
                rows.append((s, edit, suggestion, edited, start - lo, start - lo + len(suggestion), (start, end)))
            owners.append(s)
        sums = self._judge(rows)
        best: dict[int, tuple] = {}
        original: dict[int, float] = {}
        for (s, edit, suggestion, *_, span), total in zip(rows, sums, strict=True):
            if not edit:
                original[s] = total
                continue
            gain = total - original[s]
            if gain > EDIT_MARGIN and gain > best.get(s, ("", "", -math.inf))[2]:
                best[s] = (edit, suggestion, float(gain), span)
        return best

    def _judge(self, rows: list[tuple]) -> list[float]:
        """For each snippet row, the summed cloze log-probability of the characters within AROUND of
        its edited span (the span itself included), read from a fresh state."""
        if not rows:
            return []
        length = 2 * SNIPPET + 3
        ids = np.full((len(rows), length), -1, np.int32)
        weights = np.zeros((len(rows), length), np.float32)
        fallback = self.vocab.unknown_id if self.vocab.unknown_id is not None else self.newline
        for r, (_, _, _, snippet, start, end, _) in enumerate(rows):
            ids[r, : len(snippet)] = [self.vocab.index.get(c, fallback) for c in snippet]
            weights[r, max(0, start - AROUND) : min(len(snippet), end + AROUND)] = 1.0
        sums = []
        for first in range(0, len(rows), SNIPPET_ROWS):
            part = slice(first, first + SNIPPET_ROWS)
            count = len(ids[part])
            padded = SNIPPET_ROWS if count > 16 else 16  # two compiled shapes: a few findings, or many
            chunk_ids = np.full((padded, length), -1, np.int32)
            chunk_weights = np.zeros((padded, length), np.float32)
            chunk_ids[:count], chunk_weights[:count] = ids[part], weights[part]
            sums.extend(np.asarray(self._snippets(self.params, chunk_ids, chunk_weights))[:count].tolist())
        return sums

    def _snippet_logprobs(self, params, ids, weights):
        from charrnn.bidirectional import BiCharRNN
        from charrnn.model import initial_carry

        after = jnp.full((ids.shape[0], 1), -1, jnp.int32)
        carry = initial_carry(self.config, ids.shape[0])
        logits, _ = BiCharRNN(self.config).apply({"params": params}, ids, after, carry, reset_id=self.reset_id)
        logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        chosen = jnp.take_along_axis(logprobs, jnp.maximum(ids, 0)[..., None], axis=-1)[..., 0]
        return jnp.sum(chosen * weights, axis=-1)
