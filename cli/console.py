"""Everything the CLI says that is not generated text goes through here, to stderr."""

import math
import os
import time

from rich.console import Console

# Resolved at write time, so tests that swap sys.stderr still capture it.
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def info(message: str) -> None:
    stderr.print(message, markup=False)


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def interactive() -> bool:
    """A live progress bar only on a terminal (and not when the user asked for plain output)."""
    return stderr.is_terminal and os.environ.get("TERM") != "dumb" and not os.environ.get("CHARRNN_PLAIN")


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
