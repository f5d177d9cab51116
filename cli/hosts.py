"""`charrnn train` over several hosts: one line, not a fatal log, when a host is lost.

A process that fails says so in one line and leaves at once; the others are ended by JAX's
coordination service, and their standard error goes through `charrnn.cli.host_log`, which turns
that end into one line naming the process lost.
"""

import contextlib
import os
import sys
import time

from charrnn.errors import CharrnnError

from . import console
from .options import flag


@contextlib.contextmanager
def failure_ends_every_host():
    """Over several hosts, a process that fails says so in one line and leaves at once, without
    JAX's shutdown barrier (which would wait for hosts that are waiting for it in a collective):
    the coordination service then sees it gone and ends the other processes, each with one line of
    its own (`relay_output`). A failure that is itself another process gone (a collective whose
    peer closed its connection: gloo says so before the heartbeat does) waits for that service to
    end this process too, so that its line names the process lost. Checkpoints are written to a
    temporary directory and renamed when complete, so the last complete one survives."""
    import jax

    try:
        yield
    except Exception as error:
        if jax.process_count() == 1 or not (isinstance(error, CharrnnError) or peer_lost(error)):
            raise
        if peer_lost(error):
            from charrnn.placement import HEARTBEAT_TIMEOUT

            time.sleep(HEARTBEAT_TIMEOUT + 5)  # normally ended before this by the coordination service
            error = CharrnnError(f"lost contact with another process of the run: {str(error).splitlines()[0]}")
        shown = error.worded(flag) if isinstance(error, CharrnnError) else str(error)
        console.info(f"charrnn: error: process {jax.process_index()} of {jax.process_count()}: {shown}")
        sys.stderr.flush()
        os._exit(getattr(error, "exit_code", 1))


def peer_lost(error: Exception) -> bool:
    """Whether `error` comes from a collective (gloo) whose peer went away."""
    text = str(error)
    return "Gloo" in text and ("reset by peer" in text or "closed" in text.lower() or "Broken pipe" in text)


def relay_output() -> None:
    """Send this process's standard error (and its stdout, which is stderr here) through
    `charrnn.cli.host_log`, so that JAX ending it for a lost host is one line, not a fatal log."""
    import subprocess

    import jax

    read_end, write_end = os.pipe()
    subprocess.Popen(
        [sys.executable, "-m", "charrnn.cli.host_log", str(jax.process_index()), str(jax.process_count())],
        stdin=read_end,
        stdout=subprocess.DEVNULL,
    )
    os.close(read_end)
    sys.stderr.flush()
    for descriptor in (1, 2):
        os.dup2(write_end, descriptor)
    os.close(write_end)


def is_leader() -> bool:
    """Whether this process speaks for the run: the only one, or process 0 of several hosts."""
    import jax

    return jax.process_index() == 0
