"""Many requests for text at once: continuous batching over a fixed number of sampling slots.

Each request (a `Completion`) takes a slot of one sampling batch. The slots advance together, a
chunk of characters per call of one compiled program (`make_slots_chunk`); a request joins at the
next chunk and leaves when it ends or is cancelled, so a user never waits for another's text to
finish. What a request chooses (temperature, top-k, top-p, its seed) is per slot, an array the
program reads: any mix of requests runs the same compiled program. Each slot draws with its own
random key, and a request's text depends on its prompt, options and seed alone: the same request
gives the same text whatever else is being served (a test checks it).

The program runs over the smallest bucket of slots (1, 4, 16, ... up to `slots`) that holds every
busy one, and a new request takes the lowest free slot: one user pays for one stream, not for all.

`Engine` is the library's server-side sampler; `charrnn.server` puts HTTP in front of it, and
`charrnn.slots` holds the compiled programs it runs. Longer than most modules, for a reason: the
engine's thread, admission and delivery share the slots' state, and each would reach into the
others if split.
"""

import collections
import dataclasses
import math
import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from charrnn.config import MAX_SEED, check_capacity
from charrnn.errors import CharrnnError, ConfigError
from charrnn.model import initial_carry
from charrnn.slots import PROMPT_PIECE, TOP, buckets, make_prompt_reader, make_slots_chunk, place
from charrnn.trained import TrainedModel


@dataclasses.dataclass(frozen=True)
class Completion:
    """One text to write: after `prompt`, at most `max_tokens` characters, ending early at the first
    `stop` text (not included). `logprobs` (0 to 5, or None for none): each character's
    log-probability and that many likeliest alternatives; with `echo`, the prompt's too."""

    prompt: str = ""
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    echo: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 0:
            raise ConfigError("max_tokens", f"must be >= 0, not {self.max_tokens}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ConfigError("temperature", f"must be a number >= 0, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError("top_p", f"must be in (0, 1], not {self.top_p}")
        if self.top_k < 0:
            raise ConfigError("top_k", f"must be >= 0, not {self.top_k}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError("seed", f"must be between 0 and {MAX_SEED}, not {self.seed}")
        if self.logprobs is not None and not 0 <= self.logprobs <= TOP:
            raise ConfigError("logprobs", f"must be between 0 and {TOP}, not {self.logprobs}")
        if any(not text for text in self.stop):
            raise ConfigError("stop", "must not hold an empty text")


@dataclasses.dataclass(frozen=True)
class Scored:
    """One character's log-probability (None for a text's first: nothing came before it) and the
    likeliest characters at its place with theirs."""

    char: str
    logprob: float | None
    top: tuple[tuple[str, float], ...] | None


@dataclasses.dataclass(frozen=True)
class Piece:
    """The next part of a request's text; `scored` per character when the request asked for it.
    `prompt` marks the echoed prompt."""

    text: str
    scored: tuple[Scored, ...] | None = None
    prompt: bool = False


@dataclasses.dataclass(frozen=True)
class Finished:
    """The request's text is complete: "stop" (a stop text or the end of a document) or "length"."""

    reason: str
    characters: int  # generated and delivered (the prompt not counted)


class Busy(CharrnnError):
    """Every slot is taken and the queue of waiting requests is full: try again shortly."""


Event = Piece | Finished | BaseException
Deliver = Callable[[Event], None]


@dataclasses.dataclass(eq=False)
class Ticket:
    """A submitted request: `cancel` frees its slot (or its place in the queue) at the next chunk."""

    request: Completion
    deliver: Deliver
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclasses.dataclass(eq=False)
class _Busy:
    """A slot's request in progress: the text generated but held back (it may be the start of a
    stop text), with its scores, and the count still allowed."""

    ticket: Ticket
    remaining: int
    held: str = ""
    held_scored: list[Scored] = dataclasses.field(default_factory=list)
    delivered: int = 0


class Engine:
    """One model's sampler for many requests at once (see the module's docstring). `submit` a
    `Completion` with a function that receives its `Piece`s and then its `Finished` (or the error
    that ended it), from the engine's thread; `close` when done."""

    def __init__(self, model: TrainedModel, *, slots: int = 8, queue: int = 64, chunk_size: int = 64) -> None:
        check_capacity(slots, queue)
        model.require_left_to_right("serve")
        config = model.model_config
        if jax.default_backend() == "cpu":  # see sampling.sample_stream: float32 reads faster on CPUs
            config = dataclasses.replace(config, dtype="float32")
        self.model, self.config, self.slots, self.queue_limit = model, config, slots, queue
        self.chunk_size = chunk_size
        vocab = model.vocab
        self.reset_id = vocab.index.get(model.boundary) if model.boundary else None
        self.start_id = self.reset_id if self.reset_id is not None else vocab.index.get("\n", 0)
        self._chunk = make_slots_chunk(config, chunk_size, self.reset_id, vocab.unknown_id)
        self._read_prompt = make_prompt_reader(config)
        self._chars = np.array(vocab.chars, dtype=object)
        self._carry = initial_carry(config, slots)
        self._token = jnp.zeros((slots,), jnp.int32)
        self._keys = jax.random.key_data(jax.random.split(jax.random.key(0), slots))
        self._temperature = np.ones(slots, np.float32)
        self._top_p = np.ones(slots, np.float32)
        self._top_k = np.zeros(slots, np.int32)
        self._busy: list[_Busy | None] = [None] * slots
        self._waiting: collections.deque[Ticket] = collections.deque()
        self._wake = threading.Condition()
        self._closing = False
        self.characters_generated = 0  # delivered to requests: for the server's metrics
        self._thread = threading.Thread(target=self._run, name="charrnn-engine", daemon=True)

    # -- the caller's side ------------------------------------------------------------------
    def warm_up(self) -> None:
        """Compile the program for every bucket now, so that no request waits for it."""
        for busy in buckets(self.slots):
            out = self._chunk(self.model.params, self._carry, self._token, self._keys, *self._options(), busy=busy)
            self._carry, self._token, self._keys = out[4:]
        _, carry, _ = self._prime(self.model.vocab.chars[0] * 2, scored=True)  # the prompt reader: one program
        key = jax.random.key_data(jax.random.key(0))
        self._carry, self._keys, self._token = place(self._carry, self._keys, self._token, carry, key, 0, 0)
        jax.block_until_ready(self._carry)

    def start(self) -> "Engine":
        self._thread.start()
        return self

    def submit(self, request: Completion, deliver: Deliver) -> Ticket:
        """Queue `request`; raises `Busy` when every slot is taken and the queue is full, and a
        VocabularyError when its prompt has characters the model never saw."""
        self.model.vocab.encode(request.prompt)  # names unknown characters
        if self.reset_id is not None and self.model.boundary in request.prompt:
            raise CharrnnError("{prompt} holds the character that separates documents", settings=("prompt",))
        ticket = Ticket(request, deliver)
        with self._wake:
            free = sum(slot is None for slot in self._busy)  # the waiting take these at the next chunk
            if self._closing or len(self._waiting) - free >= self.queue_limit:
                raise Busy(f"all {self.slots} sampling slots are taken and the queue is full; retry shortly")
            self._waiting.append(ticket)
            self._wake.notify()
        return ticket

    def load(self) -> tuple[int, int]:
        """(busy slots, waiting requests) now."""
        with self._wake:
            return sum(slot is not None for slot in self._busy), len(self._waiting)

    def close(self, wait: bool = True) -> None:
        """Stop after the current chunk; requests still running or waiting get a `Busy` error."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        if wait and self._thread.is_alive():
            self._thread.join()

    # -- the engine's thread ----------------------------------------------------------------
    def _run(self) -> None:
        """Admit, dispatch the next chunk, then hand out the previous chunk's characters while the
        device computes it: Python's work for one chunk overlaps the device's for the next."""
        in_flight = None
        while True:
            with self._wake:
                while not (self._closing or self._waiting or any(self._busy) or in_flight):
                    self._wake.wait()
                if self._closing:
                    break
                admitted = []
                while self._waiting and None in self._busy:
                    ticket = self._waiting.popleft()
                    if not ticket.cancelled:
                        slot = self._busy.index(None)
                        self._busy[slot] = _Busy(ticket, ticket.request.max_tokens)
                        admitted.append(slot)
            for slot in admitted:
                self._guarded(slot, self._admit)
            for slot, busy in enumerate(self._busy):
                if busy is not None and busy.ticket.cancelled:
                    self._busy[slot] = None
            dispatched = self._dispatch() if any(self._busy) else None
            if in_flight:
                self._collect(*in_flight)
            in_flight = dispatched
        ending = Busy("the server is shutting down")
        for busy in self._busy:
            if busy is not None:
                busy.ticket.deliver(ending)
        for ticket in self._waiting:
            ticket.deliver(ending)

    def _guarded(self, slot: int, action: Callable[[int], None]) -> None:
        try:
            action(slot)
        except Exception as error:  # the request ends with its error; the others go on
            busy = self._busy[slot]
            self._busy[slot] = None
            if busy is not None:
                busy.ticket.deliver(error)

    def _options(self) -> tuple[np.ndarray, ...]:
        return self._temperature, self._top_p, self._top_k

    def _admit(self, slot: int) -> None:
        """Warm the slot's state on the prompt (scoring it, for an echo with logprobs) and set its
        options and random key."""
        busy = self._busy[slot]
        request = busy.ticket.request
        ids, carry, scored = self._prime(request.prompt, request.echo and request.logprobs is not None)
        if request.echo:
            first = [Scored(request.prompt[0], None, None)] if request.prompt else []
            with_scores = request.logprobs is not None
            busy.ticket.deliver(Piece(request.prompt, tuple(first + scored) if with_scores else None, prompt=True))
        if request.max_tokens == 0:
            self._finish(slot, "length")
            return
        first = int(ids[-1]) if len(ids) else self.start_id
        key = jax.random.key_data(jax.random.key(request.seed))  # outside jit: 64-bit seeds
        self._carry, self._keys, self._token = place(self._carry, self._keys, self._token, carry, key, first, slot)
        self._temperature[slot], self._top_p[slot], self._top_k[slot] = (
            request.temperature,
            request.top_p,
            request.top_k,
        )

    def _prime(self, prompt: str, scored: bool) -> tuple[np.ndarray, Any, list[Scored]]:
        """The prompt's ids, the state after reading all but its last character (which the first
        step reads, as `sample` does), and each character after the first scored if asked."""
        ids = np.asarray(self.model.vocab.encode(prompt), np.int32) if prompt else np.zeros(0, np.int32)
        inputs, targets = ids[:-1], ids[1:]
        pad = -len(inputs) % PROMPT_PIECE
        inputs, targets = np.pad(inputs, (pad, 0)), np.pad(targets, (pad, 0))
        carry, out = initial_carry(self.config, 1), []
        for at in range(0, len(inputs), PROMPT_PIECE):
            piece = slice(at, at + PROMPT_PIECE)
            start = pad if at == 0 else PROMPT_PIECE
            logprob, top_ids, top_logprob, carry = self._read_prompt(
                self.model.params, carry, inputs[piece], targets[piece], start
            )
            if scored:
                first = start if at == 0 else 0
                logprob, top_ids, top_logprob = (np.asarray(a)[first:] for a in (logprob, top_ids, top_logprob))
                out += self._scored(targets[piece][first:], logprob, top_ids, top_logprob)
        return ids, carry, out

    def _scored(self, ids, logprob, top_ids, top_logprob) -> list[Scored]:
        chars, n = self._chars, self.model.vocab.unknown_id
        return [
            Scored(chars[i], float(lp), tuple((chars[t], float(tl)) for t, tl in zip(ti, tlp, strict=True) if t != n))
            for i, lp, ti, tlp in zip(ids, logprob, top_ids, top_logprob, strict=True)
        ]

    def _dispatch(self) -> tuple[tuple, list] | None:
        """Start one chunk for every busy slot (over the smallest bucket holding them); its outputs
        and the requests it was computed for."""
        last = max(slot for slot, busy in enumerate(self._busy) if busy is not None)
        size = next(b for b in buckets(self.slots) if b > last)
        try:
            *out, self._carry, self._token, self._keys = self._chunk(
                self.model.params, self._carry, self._token, self._keys, *self._options(), busy=size
            )
        except Exception as error:  # the device failed: every running request ends with it
            self._fail_all(error)
            return None
        return tuple(out), list(self._busy)

    def _collect(self, out: tuple, occupants: list) -> None:
        """A finished chunk's characters to the requests it was computed for, if still running."""
        try:
            ids, logprob, top_ids, top_logprob = (np.asarray(a) for a in out)
        except Exception as error:  # the device failed: every running request ends with it
            self._fail_all(error)
            return
        for slot, busy in enumerate(occupants):
            if busy is not None and self._busy[slot] is busy:
                self._guarded(
                    slot, lambda s: self._advance(s, ids[:, s], logprob[:, s], top_ids[:, s], top_logprob[:, s])
                )

    def _fail_all(self, error: Exception) -> None:
        for slot, busy in enumerate(self._busy):
            if busy is not None:
                self._busy[slot] = None
                busy.ticket.deliver(error)

    def _advance(self, slot: int, ids, logprob, top_ids, top_logprob) -> None:
        busy = self._busy[slot]
        request = busy.ticket.request
        take = min(len(ids), busy.remaining)
        ids = ids[:take]
        busy.remaining -= take
        text = "".join(self._chars[ids])
        busy.held += text
        wants = request.logprobs is not None
        if wants:
            busy.held_scored += self._scored(ids, logprob[:take], top_ids[:take], top_logprob[:take])
        stops = request.stop + ((self.model.boundary,) if self.reset_id is not None else ())
        found = [at for at in (busy.held.find(text) for text in stops) if at >= 0]
        if found:
            self._deliver(busy, min(found))
            self._finish(slot, "stop")
        elif busy.remaining == 0:
            self._deliver(busy, len(busy.held))
            self._finish(slot, "length")
        else:
            keep = max((len(text) for text in stops), default=1) - 1  # may be the start of a stop text
            self._deliver(busy, len(busy.held) - keep)

    def _deliver(self, busy: _Busy, end: int) -> None:
        if end <= 0:
            return
        text, busy.held = busy.held[:end], busy.held[end:]
        scored = None
        if busy.ticket.request.logprobs is not None:
            scored, busy.held_scored = tuple(busy.held_scored[:end]), busy.held_scored[end:]
        busy.delivered += len(text)
        self.characters_generated += len(text)
        busy.ticket.deliver(Piece(text, scored))

    def _finish(self, slot: int, reason: str) -> None:
        busy = self._busy[slot]
        self._busy[slot] = None
        busy.ticket.deliver(Finished(reason, busy.delivered))
