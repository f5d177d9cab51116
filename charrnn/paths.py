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


def why_unreadable(error: OSError) -> str:
    """How opening a file for reading failed, as the end of a one-line message ("corpus x.txt does
    not exist"): the same words for every file a command reads (corpus, prime, lines to score)."""
    if isinstance(error, FileNotFoundError):
        return "does not exist"
    if isinstance(error, IsADirectoryError):
        return "is a directory, not a text file"
    if isinstance(error, PermissionError):
        return "is not readable (permission denied)"
    return f"cannot be read: {error.strerror or error}"


def check_output_dir(path: Path, label: str) -> None:
    """Refuse, before any slow work, a directory that cannot be written: `path` names a file, lies
    inside a file, or it (or the nearest existing parent it would be created in) is not writable
    (permissions, a read-only file system). Parents that do not exist are fine: they are created
    when the output is written. Nothing is created or left behind by the check.

    `label` says where the path came from in the message (``--out``, ``--html``...).
    """
    from charrnn.errors import OutputError

    path = Path(path)
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        if existing == path:
            raise OutputError(f"{label} {path} is a file, not a directory")
        raise OutputError(f"{label} {path} cannot be created: {existing} is a file, not a directory")
    if not existing.exists():  # a dangling symbolic link
        raise OutputError(f"{label} {path} cannot be created: {existing} is a broken symbolic link")
    _probe_writable(existing, label, path)


def check_output_file(path: Path, label: str) -> None:
    """Refuse, before any slow work, a file that cannot be written: `path` is a directory, or its
    directory cannot be written or created (see `check_output_dir`). An existing file is replaced
    (callers write a temporary file beside it and rename it over)."""
    from charrnn.errors import OutputError

    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{label} {path} is a directory, not a file")
    if os.path.lexists(path) and not path.exists():
        raise OutputError(f"{label} {path} is a broken symbolic link")
    check_output_dir(path.parent, label)


def _probe_writable(directory: Path, label: str, path: Path) -> None:
    """Create and remove a file in `directory`: the only test that is right for root, ACLs and
    read-only mounts alike (os.access answers for the real user and ignores mount options)."""
    import tempfile

    from charrnn.errors import OutputError

    try:
        descriptor, probe = tempfile.mkstemp(dir=directory, prefix=".charrnn-write-test-")
    except OSError as error:
        reason = "permission denied" if isinstance(error, PermissionError) else (error.strerror or str(error))
        inside = "" if directory == path else f" (in {directory})"
        raise OutputError(f"{label} {path} is not writable{inside}: {reason}") from None
    os.close(descriptor)
    os.unlink(probe)
