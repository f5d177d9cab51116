"""Everything the CLI says that is not generated text goes through here, to stderr."""

import functools
import math
import os
import time
from typing import TYPE_CHECKING

from charrnn.errors import CharrnnError

if TYPE_CHECKING:
    from rich.console import Console


@functools.cache
def stderr() -> "Console":
    """The console on stderr, made at first use (`--help` needs no rich). It finds sys.stderr at
    write time, so tests that swap sys.stderr still capture it."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def info(message: str) -> None:
    stderr().print(message, markup=False)


def warn(text: "str | CharrnnError") -> None:
    """A warning from the library, on stderr; one that names settings, in the options' names."""
    if not isinstance(text, str):
        from .options import flag

        text = text.worded(flag)
    info(f"charrnn: warning: {text}")


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def interactive() -> bool:
    """A live progress bar only on a terminal (and not when the user asked for plain output)."""
    return stderr().is_terminal and os.environ.get("TERM") != "dumb" and not os.environ.get("CHARRNN_PLAIN")


class PlainTicker:
    """Rate-limits plain progress lines when stderr is a file or a pipe."""

    def __init__(self, every_seconds: float = 10.0) -> None:
        self.every, self.last = every_seconds, -math.inf

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            return True
        return False


def show_stats(stats: dict, directory, cached: bool) -> None:
    """A prepared corpus in a few lines: `prep` and `train` print it."""
    common = "  ".join(f"{char!r}:{count}" for char, count in stats["most_common"])
    documents = f" in {stats['documents']:,} documents" if stats.get("documents") else ""
    info(
        f"corpus {stats['source']}: {stats['characters']:,} characters{documents}, vocabulary {stats['vocab_size']:,} "
        f"({stats['dtype']}); train {stats['train_characters']:,}, validation {stats['val_characters']:,}"
        f"{' (cached)' if cached else ''}\n"
        + (
            f"  --min-count {stats['min_count']}: {stats['rare_characters']:,} rare characters "
            f"({stats['rare_occurrences']:,} occurrences) share the unknown symbol\n"
            if stats.get("min_count", 1) > 1
            else ""
        )
        + f"  most frequent: {common}\n"
        f"  prepared in {directory}"
    )


def silence_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the exit-time flush cannot raise again."""
    import sys

    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no descriptor behind it (a closed stdout): nothing to flush
        pass
    finally:
        os.close(devnull)
