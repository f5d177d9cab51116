"""What the commands that use a trained model read: which run and which file (`score` and `eval`
take ``[RUN] [FILE]``), the file's lines, and the model itself, through the library's loader."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from charrnn.errors import CharrnnError, CorpusError
from charrnn.paths import standard_input, why_unreadable

from . import console
from .options import require_nonempty

if TYPE_CHECKING:
    from charrnn.runs import Run
    from charrnn.trained import TrainedModel


RUN_OR_FILE_HELP = (
    "The run directory and the file to read. Given one argument, it is the run if it is a directory "
    "with a config.json, else the FILE (read with the run trained most recently under ./runs). "
    "FILE `-` or none: standard input."
)


def run_and_file(first: str | None, second: str | None) -> tuple[Path | None, str | None]:
    """Tell RUN from FILE: ``RUN FILE``; one argument is a run if it holds a config.json, else a file."""
    require_nonempty("RUN" if second is not None else "RUN or FILE", first)
    require_nonempty("FILE", second)
    if second is not None:
        return Path(first), second
    if first is None or first == "-":
        return None, first
    path = Path(first)
    if (path / "config.json").is_file():
        return path, None
    if path.is_dir():
        raise CharrnnError(f"{first} is not a charrnn run (no config.json)")
    if not path.exists():
        raise CharrnnError(f"{first} does not exist (neither a run directory nor a file)")
    return None, first


def open_input(source: str | None) -> tuple[BinaryIO, str]:
    """The binary stream to read (stdin for None or ``-``) and its name for messages; every problem is one line."""
    if source in (None, "-"):
        stream = standard_input()
        if stream.isatty():
            console.info("reading lines from standard input; end with Ctrl-D")
        return stream, "standard input"
    path = Path(source)
    if path.is_dir():
        raise CorpusError(f"{source} is a directory, not a text file")
    try:
        return path.open("rb"), source
    except OSError as error:
        raise CorpusError(f"{source} {why_unreadable(error)}") from None


def read_lines(stream: BinaryIO, label: str) -> Iterator[str]:
    """Lines as they arrive (split at ``\\n`` only, so a ``\\r`` stays a character), without their newline."""
    number = 0
    try:
        for number, raw in enumerate(stream, 1):  # noqa: B007 (used in the messages below)
            try:
                yield raw.removesuffix(b"\n").decode("utf-8")
            except UnicodeDecodeError as error:
                raise CorpusError(
                    f"{label} line {number} is not valid UTF-8 (byte {error.start + 1} of the line)"
                ) from None
    except OSError as error:
        raise CorpusError(f"{label} cannot be read after line {number}: {error.strerror or error}") from None


def load_trained(run: Path | Run | None, checkpoint: str) -> TrainedModel:
    """The run's model through the library's one loader (`charrnn.trained.load`), with JAX
    configured the CLI's way and damaged checkpoints skipped with a warning."""
    from charrnn.config import parse_checkpoint

    which = parse_checkpoint(checkpoint)  # a bad value fails before JAX is loaded
    from .process import configure_jax

    configure_jax()
    from charrnn.trained import load

    return load(run, which, warn=console.warn)


def read_text(stream: BinaryIO, label: str) -> str:
    """The whole of `stream` as UTF-8 text; every problem is one line."""
    try:
        data = stream.read()
    except OSError as error:
        raise CorpusError(f"{label} cannot be read: {error.strerror or error}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CorpusError(f"{label} is not valid UTF-8 (bad byte at offset {error.start})") from None
