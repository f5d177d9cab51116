"""Finding characters that do not fit: `charrnn check`, with a bidirectional model.

Every character is judged given both sides (charrnn.bidirectional): the text is read as training
read its windows (the forward state carried, the backward stack reading each window plus its
look-ahead), in many streams side by side, with a newline before and after the text as context.
The windows are longer than training's (`WINDOW`), so the look-ahead, read once per window, is a
smaller share of the work, and each stream starts after a shorter burn-in (`BURN_IN`).
A place is reported when an edit there would make the text more likely by over `threshold` nats (an
edit that blames the place's character, by the mean of that and the character's surprisal: `_score`), or
when its character is so unlikely (surprisal over `threshold`) that it is taken for an error even
though none of the edits tried fits better (unless it is within `EXPLAINED` characters of a reported
edit, and no more surprising than the edited character: its context held that error). The default
threshold is ln(vocabulary size) + `PRIOR`: a noisy channel's reasoning, where a mistyped character
is any of the vocabulary's and mistakes are rare, so that a model with 6,000 characters needs more
evidence than one with 65. The same channel prices a dropped character or two swapped ones lower: no
character was chosen to make them, so the edits that undo them (inserting, swapping) are credited
part of ln(vocabulary size) (`Checker.credit`). A place whose text (the edited characters and
`REPEAT_CONTEXT` on each side) occurs again elsewhere in the text, unchanged, is left out by
default: a writer's repeated string is meant (a name, a term the model never saw), a typo seldom
repeats itself.

From the one reading, each character gets three estimates (see `Cloze.edit_estimates`): what
replacing it, deleting it, or inserting a character before it would gain. A run of adjacent
characters whose best estimate passes `CANDIDATE_FRACTION` of the threshold is one candidate; at its
places where each kind of edit is estimated to gain most (the `TRIED_PER_RUN` best for an insertion,
whose estimate is roughest), the edits are tried: the model's likeliest replacements, deleting the
character, inserting the likeliest characters before it, swapping it with a neighbour. Each edit is
judged by how much it raises the log-probability of the characters around it, read two ways. The
cloze's (the summed cloze log-probabilities of the candidate's neighbourhood, as it is and as each
edit writes it: a pseudo-log-likelihood) sees each character from both sides, but has one term per
character, so it cannot weigh a text against one with a character more: a dropped letter often
leaves characters that each still fit between their neighbours. The stacks' own output layers
(`ModelConfig.direction_heads`) give true likelihoods, left to right and right to left, which price
a missing or extra character, each from one side. An edit's gain is the mean of the two one-way
gains plus `CLOZE_WEIGHT` of the cloze's (for a model without those layers, the cloze's alone). All
of a candidate's versions (`Checker.versions`) are read between the same two states, those the
`CONTEXT` characters on either side leave (`Checker.judge`), so only the neighbourhood is read once
per edit; the best edit is the suggestion, and the candidate is reported if its score (`_score`)
passes the threshold.
Rescoring costs in proportion to the candidates, not to the text.

A character of the vocabulary that training never read (one seen only in the validation split) has
a probability the model never learned, far below any it has for a character it read; a run records
such characters (charrnn.start.untrained_record) and they are given at least the probability of an
unseen character (`untrained_floor`), so that each use of one is not taken for a typo.
"""

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from charrnn.batching import cloze_windows
from charrnn.config import ModelConfig
from charrnn.errors import UsageError
from charrnn.vocab import Vocabulary

PRIOR = 4.0  # nats above ln(vocabulary size): the default threshold, by measurement (docs/checking.md)
UNPRICED_EDITS = ("insert", "swap")  # edits that undo a mistake which chose no character (see `Checker.credit`)
SUSPECT_EDITS = ("replace", "delete")  # edits that take the place's character for the mistake (see `_score`)
UNPRICED_SHARE = 0.5  # of ln(vocabulary size) credited to them, by measurement (docs/checking.md)
REPEAT_CONTEXT = 2  # characters on each side of a place that must recur with it for it to count as meant
CANDIDATE_FRACTION = 0.5  # places whose estimated gain passes this share of the threshold are rescored
TRIED_PER_RUN = 3  # places of a run of candidates where an insertion is estimated to gain most, tried (measured)
CLOZE_WEIGHT = 1 / 3  # of the cloze's gain in an edit's gain, beside the whole one-way gain (by measurement)
TOP = 5  # likeliest characters kept per position
CONTEXT = 32  # characters read on each side of an edit's neighbourhood when edits are compared
AROUND = 3  # characters on each side of the edited place whose log-probabilities are summed too
EXPLAINED = AROUND  # characters on each side of a reported edit whose surprisal it explains (not reported again)
EDIT_MARGIN = 1.0  # nats an edit must gain over the text as it is to be suggested
STREAMS = 64  # streams read side by side (the bench shape's batch)
WINDOW = 128  # characters per window of the reading
BURN_IN = 64  # characters of the text before each stream's first that the stream reads first
JUDGED_GROUPS = 64  # places whose edits are judged per compiled call
EDITS_PER_PLACE = 9  # the text as it is and at most 8 edits (`_edits`)
ROW_WIDTH = 2 * AROUND + 4  # the longest edited neighbourhood: text[s-1 : s+2] with an insertion, AROUND beyond
Progress = Callable[[str, int, int], None]  # (stage: "reading" or "judging", done, total), as work completes


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
    forward_logprob: np.ndarray | None = None  # <f32>[n] log p(x_t | x_<t), by the forward stack alone
    backward_logprob: np.ndarray | None = None  # <f32>[n] log p(x_t | x_>t), by the backward stack alone

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
            if self.forward_logprob is not None:
                backward_before = np.concatenate([[-np.inf], self.backward_logprob[:-1].astype(np.float64)])
                insert = np.fmax(insert, self.gap_logprob - (self.forward_logprob + backward_before) / 2)
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
    gap's likeliest character's log-probability and id, and with `direction_heads` each character's
    log-probability one way and the other; see `Cloze`); an optional last argument, the per-id
    `untrained_floor`, puts a floor under each character's log-probabilities."""
    from charrnn.bidirectional import BiCharRNN

    model = BiCharRNN(model_config)

    def chunk(params, carry, chars, after, floor=None):
        left, right, carry = model.apply({"params": params}, chars, after, carry, reset_id=reset_id, method="sides")
        from_left, from_right = model.apply({"params": params}, left, right, method="head_halves")

        def log_probs(from_left, from_right):  # the character between a left state and a right state
            return jax.nn.log_softmax(from_left + from_right, axis=-1)

        def pad(values, where):  # [B, T-1] -> [B, T], -inf where the window's edge leaves it unknown
            edge = jnp.full(values[:, :1].shape, -jnp.inf, values.dtype)
            return jnp.concatenate([values, edge] if where == "end" else [edge, values], axis=1)

        logprobs = log_probs(from_left, from_right)
        top_logprobs, top_ids = jax.lax.top_k(logprobs, min(TOP, logprobs.shape[-1]))
        hole = log_probs(from_left[:, :-1], from_right[:, 1:])  # x_k and x_k+1 taken out
        gap = log_probs(from_left[:, 1:], from_right[:, :-1])  # nothing taken out: between x_t-1 and x_t
        columns = [
            _picked(logprobs, chars, floor),
            top_ids,
            jnp.exp(top_logprobs),
            pad(_picked(hole, chars[:, :-1], floor), "end"),
            pad(_picked(hole, chars[:, 1:], floor), "end"),
            pad(gap.max(axis=-1), "start"),
            jnp.pad(gap.argmax(axis=-1), ((0, 0), (1, 0))),  # no gap before a window's first character: id 0
        ]
        if model_config.direction_heads:
            one_way = model.apply({"params": params}, left, right, method="direction_logits")
            columns += [_picked(jax.nn.log_softmax(logits, axis=-1), chars, floor) for logits in one_way]
        return carry, *columns

    return jax.jit(chunk)


def cloze(
    params: Any,
    model_config: ModelConfig,
    ids: np.ndarray,
    *,
    window: int = WINDOW,
    streams: int = STREAMS,
    reset_id: int | None = None,
    burn_in: int = BURN_IN,
    progress: Progress | None = None,
    floor: np.ndarray | None = None,
) -> Cloze:
    """The cloze log-probability of every id of `ids` after the first (the first is context only),
    read as training reads: `streams` side by side (each after `burn_in` characters of the one
    before), windows of `window` and the model's look-ahead. `floor`: per id, the least
    log-probability a character is given (`untrained_floor`)."""
    from charrnn.model import initial_carry

    lookahead = model_config.lookahead
    # The windows of the positions, -1 past the text's end: the ids are looked up, the results put back.
    where = cloze_windows(np.arange(len(ids)), streams, window, lookahead, burn_in=burn_in)
    padded_ids = np.append(ids, -1).astype(np.int32)  # position -1 reads -1
    step = make_cloze_chunk(model_config, reset_id)
    carry = initial_carry(model_config, where[0][0].shape[0])
    n = len(ids)
    columns = [np.zeros(n, np.float32), np.zeros((n, min(TOP, model_config.vocab_size)), np.int32)]
    columns += [
        np.zeros(columns[1].shape, np.float32),
        *(np.zeros(n, np.float32) for _ in range(3)),
        np.zeros(n, np.int32),
        *(np.zeros(n, np.float32) for _ in range(2 if model_config.direction_heads else 0)),
    ]
    outputs = []
    for positions, after, weights in where:
        carry, *out = step(params, carry, padded_ids[positions], padded_ids[after], floor)  # fetched below
        outputs.append((out, positions, weights))
    for done, (out, positions, weights) in enumerate(outputs, 1):
        if progress is not None:
            progress("reading", done, len(outputs))
        counted = weights > 0
        at = positions[counted]
        for column, values in zip(columns, out, strict=True):
            column[at] = np.asarray(values)[counted]
    return Cloze(*columns).sliced(slice(1, None))


def _picked(logprobs: jax.Array, ids: jax.Array, floor: jax.Array | None) -> jax.Array:
    """log p of each id (-1, past a text's end, reads id 0), at least the id's `floor` if given."""
    picked = jnp.take_along_axis(logprobs, jnp.maximum(ids, 0)[..., None], axis=-1)[..., 0]
    return picked if floor is None else jnp.maximum(picked, floor[jnp.maximum(ids, 0)])


def untrained_floor(vocab: Vocabulary, untrained: str, unseen_share: float) -> np.ndarray | None:
    """Per id, the least log-probability a character is given: for the characters training never read
    (`untrained`), the share of text in unseen characters spread evenly over them; -inf for the
    others. None when there are none. The model's own figure for such a character is no estimate (its
    output column was only ever pushed down), so every use of it would read as a typo."""
    ids = sorted({vocab.index[c] for c in untrained if c in vocab})
    if not ids or not unseen_share > 0:
        return None
    floor = np.full(len(vocab), -np.inf, np.float32)
    floor[ids] = math.log(unseen_share / len(ids))
    return floor


def check_threshold(threshold: float) -> None:
    """Refuse a threshold that is not a number >= 0, by name (callers check before loading a model)."""
    if not (threshold >= 0 and math.isfinite(threshold)):
        raise UsageError(f"{{threshold}} must be a number >= 0, not {threshold}", settings=["threshold"])


def _runs(flagged: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of adjacent flagged places."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flagged.astype(np.int8), [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _peaks(flagged: np.ndarray, values: np.ndarray) -> list[int]:
    """The index of the largest value in each run of adjacent flagged places."""
    return [a + int(np.argmax(values[a:b])) for a, b in _runs(flagged)]


def _reported(edited: list[int], surprisal: np.ndarray, threshold: float) -> list[int]:
    """The places reported: the `edited` ones, and each run's most surprising character over
    `threshold`, unless a reported edit explains it. A surprising character near an edit is the edit's
    doing (its context held the error): next to it always, within `EXPLAINED` unless it is more
    surprising than the edited one (then the edit may be in the wrong place)."""
    explained = np.full(len(surprisal), -np.inf)
    for s in edited:
        lo, hi = max(0, s - EXPLAINED), s + EXPLAINED + 1
        explained[lo:hi] = np.maximum(explained[lo:hi], surprisal[s])
        explained[max(0, s - 1) : s + 2] = np.inf  # next to it: the same place
    peaks = _peaks(surprisal > threshold, surprisal)
    return sorted(set(edited) | {s for s in peaks if surprisal[s] > explained[s]})


def _recurs(text: str, start: int, end: int) -> bool:
    """Whether text[start:end], with REPEAT_CONTEXT characters on each side, occurs twice in `text`."""
    piece = text[max(0, start - REPEAT_CONTEXT) : end + REPEAT_CONTEXT]
    return text.find(piece, text.find(piece) + 1) >= 0


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


def _score(edit: str, gain: float, surprisal: float, credit: float) -> float:
    """What the threshold is held against for a place whose best edit is `edit`. Where the edit takes
    the place's character for the mistake (`SUSPECT_EDITS`), the character's cloze surprisal is a
    second estimate of the same odds: -log p(x | both sides) is the log of p(y | both sides) / p(x |
    both sides) summed over every character y that could stand there, the evidence of all
    replacements, where the gain is that of the best edit tried. The two err differently (the sum
    counts characters the edit did not try, the gain reads true likelihoods): their mean is held to
    the threshold. Other edits blame no character there: their gain, with the edit's credit."""
    if edit in SUSPECT_EDITS:
        return (gain + surprisal) / 2
    return gain + credit


def _gain(cloze: float, forward: float, backward: float) -> float:
    """An edit's gain in nats from its three readings (`Checker.judge`): where the model has the
    one-way layers, the mean of their two gains (true likelihoods) plus `CLOZE_WEIGHT` of the
    cloze's (a pseudo-likelihood, sharper but counting evidence the others share); else the cloze's."""
    if math.isnan(forward):
        return cloze
    return CLOZE_WEIGHT * cloze + (forward + backward) / 2


class _Edit(NamedTuple):
    name: str  # as `Finding.edit`
    suggestion: str
    gain: float  # nats of cloze log-probability around the place
    span: tuple[int, int]
    score: float  # what the threshold is held against (`_score`): the gain with the character's surprisal or a credit


class Checker:
    """A bidirectional model's check of texts (`check`): the compiled programs are kept between texts."""

    def __init__(
        self,
        params: Any,
        model_config: ModelConfig,
        vocab: Vocabulary,
        *,
        window: int = WINDOW,
        boundary: str | None = None,
        context: int = CONTEXT,
        untrained: str = "",
        unseen_share: float = 0.0,
    ) -> None:
        if not model_config.bidirectional:
            raise UsageError(
                "checking text needs a bidirectional model (train one with --bidirectional); "
                "a left-to-right model's surprisal view is `charrnn score --show`"
            )
        if context < 1:
            raise UsageError("{context} must be at least 1", settings={"context": context})
        self.params, self.config, self.vocab, self.window = params, model_config, vocab, window
        self.reset_id = vocab.index.get(boundary) if boundary else None
        self.newline = vocab.index.get("\n", 0)
        self.context = context
        self.floor = untrained_floor(vocab, untrained, unseen_share)
        self.threshold = math.log(model_config.vocab_size) + PRIOR  # the default
        # Nats added to an edit's gain before it meets the threshold. The threshold's ln V prices the
        # character a mistyped or an extra one is (any of the vocabulary's); a character dropped, or
        # two swapped, chose none. Half of ln V measured better than all of it: substitutions draw on
        # fewer characters than the vocabulary holds (keys nearby, letters of the same case). The
        # credit decides whether a place is reported, not which of its edits is suggested.
        unpriced = UNPRICED_SHARE * math.log(model_config.vocab_size)
        self.credit = dict.fromkeys(UNPRICED_EDITS, unpriced)
        self._rescore = jax.jit(self._rescore_rows)

    def encode(self, text: str) -> np.ndarray:
        """The ids of `text` between two newlines (their context); unknown characters read as the
        vocabulary's unknown character, or a newline. A vocabulary without a newline gets its first
        character before the text and nothing (-1, the text's end) after it: a made-up character
        there would be judged as part of the text's last characters' context."""
        body = self._ids(text)
        closing = self.newline if "\n" in self.vocab else -1
        return np.concatenate([[self.newline], body, [closing]]).astype(np.int32)

    def cloze(self, text: str, progress: Progress | None = None) -> Cloze:
        """Every character of `text`, judged given both sides."""
        if not text:
            return Cloze(np.zeros(0, np.float32), np.zeros((0, TOP), np.int32), np.zeros((0, TOP), np.float32))

        return self._cloze(self.encode(text), progress)

    def _cloze(self, ids: np.ndarray, progress: Progress | None = None) -> Cloze:
        """`cloze` of the text `ids` encodes (`encode`)."""
        options = {"window": self.window, "reset_id": self.reset_id, "progress": progress, "floor": self.floor}
        full = cloze(self.params, self.config, ids, **options)
        return full.sliced(slice(None, -1))  # the closing newline is context

    def check(
        self,
        text: str,
        threshold: float | None = None,
        *,
        suggest: bool = True,
        repeated: bool = False,
        judged: Cloze | None = None,
        progress: Progress | None = None,
    ) -> list[Finding]:
        """The places in `text` where an edit would make it more likely by over `threshold` nats
        (default `self.threshold`), or whose character's surprisal is over it (see the module's
        docstring), with the edit that fits best (left out if not `suggest`); places whose text recurs
        unchanged are left out unless `repeated`; characters the model never saw are always reported.
        `judged`: the text's `cloze`, if the caller has it; `progress` is told of the work done."""
        threshold = self.threshold if threshold is None else threshold
        check_threshold(threshold)
        if not text:
            return []
        ids = self.encode(text)
        judged = self._cloze(ids, progress) if judged is None else judged
        replace, delete, insert = judged.edit_estimates()
        insert = insert + self.credit.get("insert", 0.0)
        unknown = np.array([c not in self.vocab for c in text])
        estimate = np.maximum(np.maximum(replace, delete), insert) + np.where(unknown, np.inf, 0.0)
        runs = _runs(estimate > threshold * CANDIDATE_FRACTION)
        chars = self.vocab.chars
        # Each run's places where each kind of edit is estimated to gain most: the estimates are rough.
        tried = sorted(
            {
                a + int(p)
                for a, b in runs
                for kind, places in ((replace, 1), (delete, 1), (insert, TRIED_PER_RUN), (estimate, 1))
                for p in np.argsort(-kind[a:b])[:places]
            }
        )
        alternatives = {s: [chars[k] for k in judged.top_ids[s]] for s in tried}
        inserted = {s: [chars[judged.gap_ids[s]], *alternatives[s][:1]] for s in tried}
        surprisal = np.where(unknown, np.inf, -judged.logprob.astype(np.float64))
        # The edits confirm (or not) the estimated deletions and insertions.
        edits = self._best_edits(text, ids, tried, alternatives, inserted, surprisal, progress)

        def place(a: int, b: int) -> int:  # a run's place: an unknown character, the best edit's, the top estimate
            return max(
                range(a, b), key=lambda p: (unknown[p], edits[p].score if p in edits else -math.inf, estimate[p])
            )

        spots = [place(a, b) for a, b in runs]
        edited = [s for s in spots if unknown[s] or (s in edits and edits[s].score > threshold)]
        spots = _reported(edited, surprisal, threshold)
        if not repeated:
            spots = [
                s for s in spots if unknown[s] or not _recurs(text, *(edits[s].span if s in edits else (s, s + 1)))
            ]
        edits = edits if suggest else {}
        line_starts = np.flatnonzero(np.frombuffer(text.encode("utf-32-le"), np.uint32) == 10) + 1
        findings = []
        for s in spots:
            line = int(np.searchsorted(line_starts, s, side="right"))
            column = s - (int(line_starts[line - 1]) if line else 0) + 1
            edit, suggestion, gain, span, _ = edits.get(s, _Edit("", "", 0.0, (s, s + 1), 0.0))
            findings.append(
                Finding(
                    offset=s,
                    line=line + 1,
                    column=column,
                    char=text[s],
                    prob=0.0 if unknown[s] else float(np.exp(judged.logprob[s])),
                    best=chars[judged.top_ids[s, 0]],
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
    def _best_edits(
        self,
        text: str,
        ids: np.ndarray,
        spots: list[int],
        alternatives: dict,
        inserted: dict,
        surprisal: np.ndarray,
        progress: Progress | None = None,
    ) -> dict[int, "_Edit"]:
        """Each spot's best edit, if one gains over EDIT_MARGIN: the model's evidence picks it, and its
        score (`_score`, with the spot's `surprisal` or the edit's `credit`) only decides whether it is
        reported. `ids`: the text encoded (`encode`): position p of it is character p - 1 of the text."""
        edits = [list(_edits(text, s, alternatives[s], inserted[s])) for s in spots]
        groups = [self.versions(ids, s, tried) for s, tried in zip(spots, edits, strict=True)]
        best: dict[int, _Edit] = {}
        for s, tried, sums in zip(spots, edits, self.judge(ids, groups, progress), strict=True):
            for (edit, suggestion, start, end), total in zip(tried, sums[1:], strict=True):
                gain = _gain(*(total - sums[0]).tolist())
                if gain > EDIT_MARGIN and (s not in best or gain > best[s].gain):
                    score = _score(edit, gain, float(surprisal[s]), self.credit.get(edit, 0.0))
                    best[s] = _Edit(edit, suggestion, gain, (start, end), score)
        return best

    def versions(
        self, ids: np.ndarray, s: int, tried: list[tuple[str, str, int, int]]
    ) -> tuple[int, int, list[np.ndarray]]:
        """(lo, hi, rows) for `judge`: the neighbourhood of text[s] in `ids` (`encode`'s; text[s-1 :
        s+2] and AROUND beyond), as it is and as each tried edit (edit, suggestion, start, end in the
        text) writes it."""
        lo, hi = max(1, s - AROUND), min(len(ids) - 1, s + 3 + AROUND)
        rows = [ids[lo:hi]]
        rows += [np.concatenate([ids[lo : a + 1], self._ids(new), ids[b + 1 : hi]]) for _, new, a, b in tried]
        return lo, hi, rows

    def _ids(self, chars: str) -> np.ndarray:
        fallback = self.vocab.unknown_id if self.vocab.unknown_id is not None else self.newline
        return np.fromiter((self.vocab.index.get(c, fallback) for c in chars), np.int32, count=len(chars))

    def judge(
        self, ids: np.ndarray, groups: list[tuple[int, int, list[np.ndarray]]], progress: Progress | None = None
    ) -> list[np.ndarray]:
        """For each group (lo, hi, rows), rows being versions of ids[lo:hi] (edited or not), <f32>[rows, 3]:
        the summed log-probability of each row's characters by the cloze, by the forward stack alone
        and by the backward stack alone (NaN for a model without `direction_heads`), read between the
        model's states after the `context` characters before lo and after hi, so every row of a group
        has the same context."""
        if not groups:
            return []
        # Fixed shapes for the check's own groups (one compiled program), wider ones if given.
        width = max(ROW_WIDTH, *(len(row) for _, _, rows in groups for row in rows))
        per_group = max(EDITS_PER_PLACE, *(len(rows) for _, _, rows in groups))
        sums = []
        for first in range(0, len(groups), JUDGED_GROUPS):
            part = groups[first : first + JUDGED_GROUPS]
            padded = JUDGED_GROUPS if len(part) > 4 else 4  # two compiled shapes: a few findings, or many
            left = np.full((padded, self.context), -1, np.int32)
            right = np.full((padded, self.context), -1, np.int32)
            rows = np.full((padded, per_group, width), -1, np.int32)
            reversed_rows = np.full(rows.shape, -1, np.int32)
            for g, (lo, hi, versions) in enumerate(part):
                before, after = ids[max(0, lo - self.context) : lo], ids[hi : hi + self.context][::-1]
                left[g, self.context - len(before) :] = before  # the stacks read up to lo and down to hi
                right[g, self.context - len(after) :] = after
                for r, row in enumerate(versions):
                    rows[g, r, : len(row)], reversed_rows[g, r, : len(row)] = row, row[::-1]
            totals = np.asarray(self._rescore(self.params, left, right, rows, reversed_rows, self.floor))
            sums.extend(totals[g, : len(versions)] for g, (_, _, versions) in enumerate(part))
            if progress is not None:
                progress("judging", len(sums), len(groups))
        return sums

    def _rescore_rows(self, params, left, right, rows, reversed_rows, floor=None):
        """[G, C] contexts and [G, E, N] rows (-1 past a row's end) -> [G, E, 3] summed log-probabilities:
        the cloze's, the forward stack's own and the backward stack's own (NaN without them)."""
        from charrnn.bidirectional import BiCharRNN
        from charrnn.model import initial_carry

        model = BiCharRNN(self.config)

        def read(tokens, carry, backward):
            return model.apply(
                {"params": params}, tokens, carry, backward=backward, reset_id=self.reset_id, method="read"
            )

        groups, per_group, width = rows.shape
        zero = initial_carry(self.config, groups)

        # The states the context leaves (zero where there is none), one copy per row.
        def outer_state(context, backward):  # zero where there is no context
            _, carry = read(context, zero, backward)
            read_any = context[:, -1:] >= 0
            return jax.tree.map(lambda c: jnp.repeat(c * read_any, per_group, axis=0), carry)

        outer = [outer_state(left, False), outer_state(right, True)]
        flat, flat_reversed = rows.reshape(-1, width), reversed_rows.reshape(-1, width)
        forward, _ = read(flat, outer[0], False)  # [R, N, H]: after each character
        backward, _ = read(flat_reversed, outer[1], True)  # after each character, from the right
        # Character k of a row of length n: the forward state after k - 1, the backward state after
        # k + 1, that is the backward read's step n - 2 - k; the outer states at the row's two ends.
        left_states = jnp.concatenate([outer[0][-1][0][:, None], forward[:, :-1]], axis=1)
        right_states = jnp.concatenate([outer[1][-1][0][:, None], backward[:, :-1]], axis=1)
        length = jnp.sum(flat >= 0, axis=1, keepdims=True)
        where = jnp.clip(length - 1 - jnp.arange(width)[None], 0, width - 1)
        right_states = jnp.take_along_axis(right_states, where[..., None], axis=1)
        from_left, from_right = model.apply({"params": params}, left_states, right_states, method="head_halves")
        logits = [from_left + from_right]
        if self.config.direction_heads:  # the same states, each read by its own stack's output layer
            logits += model.apply({"params": params}, left_states, right_states, method="direction_logits")
        kept = flat >= 0

        def summed(logits):
            logprobs = jax.nn.log_softmax(logits, axis=-1)
            chosen = _picked(logprobs, flat, floor)
            return jnp.sum(jnp.where(kept, chosen, 0.0), axis=-1).reshape(groups, per_group)

        sums = [summed(each) for each in logits]
        sums += [jnp.full(sums[0].shape, jnp.nan)] * (3 - len(sums))
        return jnp.stack(sums, axis=-1)
