"""The installed `charrnn` command: start the process with huge-page-backed memory, then run the CLI.

XLA allocates the train step's large buffers afresh on every call (the gates' activations of a
window alone are 52 MB per layer for the 2×512 LSTM), and each new 4 KB page costs a page fault
on first touch. glibc backs large allocations with 2 MB transparent huge pages when
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, which made the training step faster (docs/measurements.md,
Speed). glibc reads its tunables only at process start, so commands that compute re-execute
themselves once with the tunable added. This module imports nothing heavy: ``charrnn --help`` stays fast.
"""

import os
import sys
from pathlib import Path

COMPUTING_COMMANDS = {"train", "sample", "bench", "score", "eval", "serve", "check"}
TUNABLE = "glibc.malloc.hugetlb"


def hugepage_environment(environ: dict[str, str]) -> dict[str, str] | None:
    """`environ` with the huge-page tunable added, or None where it would change nothing (not Linux
    with glibc ≥ 2.35 and transparent huge pages on request, already set, or ``CHARRNN_NO_HUGEPAGES``)."""
    if sys.platform != "linux" or environ.get("CHARRNN_NO_HUGEPAGES") or TUNABLE in environ.get("GLIBC_TUNABLES", ""):
        return None
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # "glibc 2.36"
        if name != "glibc" or tuple(map(int, version.split(".")[:2])) < (2, 35):
            return None
        if "[madvise]" not in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text():
            return None  # "always" needs no request; "never" ignores it
    except (ValueError, OSError, AttributeError):
        return None
    tunables = ":".join(filter(None, [environ.get("GLIBC_TUNABLES"), f"{TUNABLE}=1"]))
    return {**environ, "GLIBC_TUNABLES": tunables}


def main() -> None:
    args = sys.argv[1:]
    if sys.executable and args and args[0] in COMPUTING_COMMANDS and not {"-h", "--help"} & set(args):
        environment = hugepage_environment(dict(os.environ))
        if environment is not None:
            os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)
    from .main import main as run

    run()


if __name__ == "__main__":
    main()
