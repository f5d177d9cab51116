"""The OpenAI completions API's shapes, for a character model: requests checked field by field into
`Completion`s, and the engine's events written as OpenAI's responses and stream chunks.

A token is a character here: ``max_tokens`` counts characters, ``usage`` counts characters, and
``logprobs`` gives each character's natural-log probability under the model (at temperature 1,
whatever the request samples at) with that many likeliest alternatives. No HTTP in this module:
`charrnn.server` calls it, and tests can.
"""

import dataclasses
import math
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from charrnn.config import MAX_SEED
from charrnn.serving import TOP, Completion, Finished, Piece, Scored

MAX_TOKENS = 100_000  # characters one choice may generate
MAX_N = 16  # choices per request
MAX_PROMPT = 100_000  # characters of prompt
MAX_STOPS = 4  # stop texts, as OpenAI
MAX_STOP_CHARS = 256


class ApiError(Exception):
    """A request the API refuses: HTTP `status` and OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    @property
    def kind(self) -> str:
        return {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
            self.status, "invalid_request_error" if self.status < 500 else "server_error"
        )

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def invalid(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param, "invalid_value")


# -- reading a request -----------------------------------------------------------------------
def _integer(body: Mapping, name: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise invalid(name, f"must be an integer, not {_shown(value)}")
    if not low <= value <= high:
        raise invalid(name, f"must be between {low} and {high}, not {int(value)}")
    return int(value)


def _number(body: Mapping, name: str, default: float, low: float, high: float, *, open_low: bool = False) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise invalid(name, f"must be a number, not {_shown(value)}")
    if value > high or value < low or (open_low and value == low):
        bounds = f"{'above' if open_low else 'at least'} {low} and at most {high}"
        raise invalid(name, f"must be {bounds}, not {value}")
    return float(value)


def _flag(body: Mapping, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(name, f"must be true or false, not {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _text(body: Mapping, name: str, default: str | None = None, limit: int = MAX_PROMPT) -> str:
    value = body.get(name, default)
    if isinstance(value, list) and len(value) == 1:  # OpenAI takes a list of prompts; one is served
        value = value[0]
    if not isinstance(value, str):
        raise invalid(name, f"must be a string, not {_shown(value)}")
    if len(value) > limit:
        raise invalid(name, f"is {len(value)} characters long; at most {limit} are served")
    return value


def _stops(body: Mapping) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise invalid("stop", "must be a non-empty string or a list of them")
    if len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stops):
        raise invalid("stop", f"at most {MAX_STOPS} texts of at most {MAX_STOP_CHARS} characters")
    return tuple(stops)


# Fields accepted for clients' sake at the value that changes nothing.
NEUTRAL = {"frequency_penalty": (0, 0.0), "presence_penalty": (0, 0.0), "best_of": (1,), "suffix": ("",)}
KNOWN = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "stream"}
KNOWN |= {"echo", "logprobs", "user", "stream_options", "logit_bias", *NEUTRAL}


@dataclass(frozen=True)
class CompletionsRequest:
    """A checked ``POST /v1/completions``: one `Completion` per choice (seeds seed, seed + 1, ...)."""

    model: str
    choices: tuple[Completion, ...]
    stream: bool
    include_usage: bool


def read_completions(body: Any) -> CompletionsRequest:
    """The request in `body` (parsed JSON), or the ApiError (400) for its first bad field."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", None, "invalid_json")
    if unknown := sorted(set(body) - KNOWN):
        raise ApiError(400, f"unrecognized request argument: {unknown[0]}", unknown[0], "unknown_parameter")
    for name, neutral in NEUTRAL.items():
        if body.get(name) is not None and body[name] not in neutral:
            raise invalid(name, f"is not supported; leave it out (or {neutral[0]!r})")
    if body.get("logit_bias"):
        raise invalid("logit_bias", "is not supported; leave it out")
    if "model" not in body:
        raise ApiError(400, "model: required", "model", "missing_required_parameter")
    model = _text(body, "model", limit=200)
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise invalid("user", f"must be a string, not {_shown(body['user'])}")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise invalid("stream_options", 'must be an object with at most "include_usage"')
    stream = _flag(body, "stream")
    seed = _integer(body, "seed", None, 0, MAX_SEED)
    n = _integer(body, "n", 1, 1, MAX_N)
    seed = secrets.randbelow(MAX_SEED - n) if seed is None else seed
    logprobs = _integer(body, "logprobs", None, 0, TOP)
    one = Completion(
        prompt=_text(body, "prompt", ""),
        max_tokens=_integer(body, "max_tokens", 16, 0, MAX_TOKENS),
        temperature=_number(body, "temperature", 1.0, 0.0, 100.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, open_low=True),
        top_k=_integer(body, "top_k", 0, 0, 1 << 20),
        seed=seed,
        stop=_stops(body),
        logprobs=logprobs,
        echo=_flag(body, "echo"),
    )
    choices = tuple(dataclasses.replace(one, seed=min(seed + i, MAX_SEED)) for i in range(n))
    include_usage = bool(options and options.get("include_usage"))
    return CompletionsRequest(model, choices, stream, include_usage)


# -- writing a response ----------------------------------------------------------------------
class Choice:
    """One choice's text and log-probabilities, built from the engine's events."""

    def __init__(self, index: int, wants_logprobs: bool) -> None:
        self.index, self.text, self.finish_reason = index, "", None
        self.logprobs = (
            {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []} if wants_logprobs else None
        )
        self.generated = 0

    def add(self, event: Piece | Finished) -> dict[str, Any]:
        """Record `event`; the choice's part of a stream chunk for it."""
        if isinstance(event, Finished):
            self.finish_reason, self.generated = event.reason, event.characters
            return self.chunk("", None)
        offset = len(self.text)
        self.text += event.text
        piece = _logprobs(event.scored, offset) if self.logprobs is not None and event.scored is not None else None
        if piece is not None:
            for key, values in piece.items():
                self.logprobs[key] += values
        return self.chunk(event.text, piece)

    def chunk(self, text: str, logprobs: dict | None) -> dict[str, Any]:
        return {"text": text, "index": self.index, "logprobs": logprobs, "finish_reason": self.finish_reason}

    def whole(self) -> dict[str, Any]:
        return self.chunk(self.text, self.logprobs)


def _logprobs(scored: Sequence[Scored], offset: int) -> dict[str, list]:
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for scored_char in scored:
        out["tokens"].append(scored_char.char)
        out["token_logprobs"].append(scored_char.logprob)
        out["top_logprobs"].append(None if scored_char.top is None else dict(scored_char.top))
        out["text_offset"].append(offset)
        offset += len(scored_char.char)
    return out


def trim_top(choice: dict[str, Any], n: int) -> dict[str, Any]:
    """Keep `n` alternatives per character (the engine computes five)."""
    logprobs = choice.get("logprobs")
    if logprobs:
        logprobs["top_logprobs"] = [None if t is None else dict(list(t.items())[:n]) for t in logprobs["top_logprobs"]]
    return choice


def envelope(ident: str, model: str, choices: list[dict[str, Any]], created: int | None = None) -> dict[str, Any]:
    return {
        "id": ident,
        "object": "text_completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": choices,
    }


def usage(prompt: str, choices: Sequence[Choice]) -> dict[str, int]:
    generated = sum(choice.generated for choice in choices)
    return {"prompt_tokens": len(prompt), "completion_tokens": generated, "total_tokens": len(prompt) + generated}
