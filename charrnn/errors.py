"""User-facing errors: each one is printed as a single line by the CLI, never as a traceback."""


class CharrnnError(Exception):
    """A mistake the user can fix (bad input, missing run, ...); the message says how."""

    exit_code: int = 1


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
        super().__init__(self.worded(field))

    def worded(self, name: str | None) -> str:
        """The message with the setting called `name` (``--hidden``, ``config.json: ...``): after it,
        or where the problem says ``{name}`` ("unknown {name} 'klingon'")."""
        if not name:
            return self.problem.replace("{name} ", "")
        return self.problem.format(name=name) if "{name}" in self.problem else f"{name} {self.problem}"


class OutputError(CharrnnError):
    """An output location (a run directory, a report file) cannot be written."""
