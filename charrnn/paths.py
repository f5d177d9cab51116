"""Where charrnn keeps things on disk: runs in ./runs, caches in the user's cache directory."""

import os
from collections.abc import Callable
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


def standard_input():
    """The binary stream of standard input, or a CorpusError when the process has none (started
    with it closed: ``charrnn prep - <&-``), where Python leaves ``sys.stdin`` None."""
    import sys

    from charrnn.errors import CorpusError

    if sys.stdin is None:
        raise CorpusError("standard input is closed; give a file, or pipe the text in")
    return sys.stdin.buffer


def check_output_dir(path: Path, label: str, *, named: Path | None = None) -> None:
    """Refuse, before any slow work, a directory that cannot be written: `path` names a file, lies
    inside a file, or it (or the nearest existing parent it would be created in) is not writable
    (permissions, a read-only file system). Parents that do not exist are fine: they are created
    when the output is written. Nothing is created or left behind by the check.

    `label` says where the path came from in the message (``--out``, ``--html``...); `named` is
    what the user gave, when `path` is the directory of that file.
    """
    from charrnn.errors import OutputError

    path = Path(path)
    named = path if named is None else Path(named)
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        if existing == named:
            raise OutputError(f"{label} {named} is a file, not a directory")
        raise OutputError(f"{label} {named} cannot be created: {existing} is a file, not a directory")
    if not existing.exists():  # a dangling symbolic link
        raise OutputError(f"{label} {named} cannot be created: {existing} is a broken symbolic link")
    _probe_writable(existing, label, named)


def check_new_run_dir(path: Path, label: str) -> None:
    """Refuse, before any slow work, a directory a new run must not be written into: one that
    holds anything. A run goes only where nothing is, or where a run is (the caller refuses that
    one with a hint to --resume): a folder of the user's own files is never written over, even
    where their names are a run's (vocab.json, metrics.jsonl). Then as `check_output_dir`."""
    from charrnn.errors import OutputError

    path = Path(path)
    check_output_dir(path, label)
    if path.is_dir() and (entries := sorted(os.scandir(path), key=lambda entry: entry.name)):
        names = [entry.name + ("/" if entry.is_dir() else "") for entry in entries]
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise OutputError(
            f"{label} {path} is not empty and not a charrnn run (it holds {shown}); give a new or empty directory"
        )


RUN_FILES = {"config.json", "vocab.json", "metrics.jsonl", "train.lock", "checkpoints", "damaged-checkpoints"}


def check_output_file(path: Path, label: str) -> None:
    """Refuse, before any slow work, a file that cannot or must not be written: `path` is a
    directory or a broken link, is one of a run's own files, or its directory cannot be written or
    created (see `check_output_dir`). Any other existing file is replaced: the user named it."""
    from charrnn.errors import OutputError

    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{label} {path} is a directory, not a file")
    if os.path.lexists(path) and not path.exists():
        raise OutputError(f"{label} {path} is a broken symbolic link")
    if path.name in RUN_FILES and (path.parent / "config.json").is_file():
        raise OutputError(f"{label} {path} is a file of the run {path.parent}; give another file name")
    if path.exists() and not path.is_file():  # /dev/stdout, a named pipe: written in place
        if not os.access(path, os.W_OK):
            raise OutputError(f"{label} {path} is not writable: permission denied")
        return
    check_output_dir(path.parent, label, named=path)


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write a file whole or not at all: `write(temporary)` fills a file beside it, which is renamed
    over `path` when complete; missing parent directories are created. A path that is not a regular
    file (``/dev/stdout``, a pipe) is written directly: there is nothing there to keep intact."""
    from charrnn.errors import OutputError

    path = Path(path)
    if path.exists() and not path.is_file():
        try:
            write(path)
        except OSError as error:
            raise OutputError(f"cannot write {path}: {error.strerror or error}") from None
        return
    temporary = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(temporary)
        os.replace(temporary, path)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        temporary.unlink(missing_ok=True)


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
