"""User-facing errors: each one is printed as a single line by the CLI, never as a traceback.

A message that names a setting writes it in braces and lists it in `settings`, with the value it
shows if any: ``CharrnnError("{batch_size} is too large", settings={"batch_size": 512})`` reads
``batch_size=512 is too large`` to a Python caller and ``--batch-size 512 is too large`` on the
command line (`worded(flag)`): the library speaks in parameters, the CLI in options."""

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Flags = Callable[[str], str]  # a setting's name -> its command-line option


class CharrnnError(Exception):
    """A mistake the user can fix (bad input, missing run, ...); the message says how."""

    exit_code: int = 1
    leaves_threads_behind: bool = False  # background threads that will never end were abandoned

    def __init__(self, message: str = "", *, settings: Mapping[str, Any] | Sequence[str] = ()) -> None:
        self.message = message
        self.settings = dict(settings) if isinstance(settings, Mapping) else dict.fromkeys(settings)
        super().__init__(self.worded())

    def worded(self, flags: Flags | None = None) -> str:
        """The message with its settings as parameters (``seq_len=0``), or with `flags` as
        options (``--seq-len 0``)."""
        if not self.settings:
            return self.message
        # Only the braces of a named setting are replaced: a path in the message may hold others.
        names = "|".join(re.escape(name) for name in self.settings)
        return re.sub(r"\{(" + names + r")\}", lambda m: _setting(m[1], self.settings[m[1]], flags), self.message)


def _setting(name: str, value: Any, flags: Flags | None) -> str:
    if flags is None:
        return name if value is None else f"{name}={value!r}"
    return flags(name) if value is None else f"{flags(name)} {value}"


class UsageError(CharrnnError):
    """A bad option value or combination; exits 2 like the CLI's own usage errors."""

    exit_code = 2


class CorpusError(CharrnnError):
    """The corpus cannot be read, decoded or is too small."""


class VocabularyError(CharrnnError):
    """Text contains characters the model's vocabulary does not have."""


class RunError(CharrnnError):
    """A run directory is missing, incomplete or does not match the request."""


class ConfigError(UsageError):
    """A configuration value is out of range or of the wrong type. It names the setting (`field`)
    and what is wrong (`problem`); the CLI rewrites the name as its option (``--hidden``), and a
    run's loader as the file and key it came from (``config.json: model.hidden_size``)."""

    def __init__(self, field: str | None, problem: str) -> None:
        self.field, self.problem = field, problem
        super().__init__(problem)

    def worded(self, flags: Flags | None = None) -> str:
        """The message with the setting called by its name or its option (``--hidden``): before the
        problem, or where it says ``{name}`` ("unknown {name} 'klingon'")."""
        if not self.field:
            return self.problem.replace("{name} ", "")
        name = flags(self.field) if flags else self.field
        return self.problem.format(name=name) if "{name}" in self.problem else f"{name} {self.problem}"


class OutputError(CharrnnError):
    """An output location (a run directory, a report file) cannot be written."""


# What the library's `warn=` callbacks receive: a line of text, or a CharrnnError when the warning
# names settings (its `str` speaks in parameters; the CLI prints `worded(flag)`).
Warn = Callable[["str | CharrnnError"], None]
