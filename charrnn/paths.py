"""Where charrnn keeps things on disk: runs in ./runs, caches in the user's cache directory."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """The per-user cache root (``$CHARRNN_CACHE``, else ``$XDG_CACHE_HOME/charrnn``, else ``~/.cache/charrnn``)."""
    if explicit := os.environ.get("CHARRNN_CACHE"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "charrnn"


def runs_dir() -> Path:
    """Default parent of run directories: ``./runs`` in the working directory."""
    return Path("runs")
