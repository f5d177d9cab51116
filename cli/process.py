"""What the CLI sets for its whole process, once, before a command computes: the library itself
changes nothing process-wide (a notebook that imports charrnn keeps its own settings)."""

import logging
import os
import sys

from charrnn.paths import cache_dir


def configure_jax() -> None:
    """Turn on the persistent compilation cache (in the user's cache directory), so that a second
    `charrnn sample` or `charrnn train` loads its XLA programs instead of compiling them again.

    JAX caches only compiles slower than 1 s by default; most of ours are faster, so the threshold
    is lowered to 0. ``CHARRNN_NO_COMPILE_CACHE=1`` turns the cache off (JAX's too); JAX's own
    ``JAX_COMPILATION_CACHE_DIR``, when set, is where it is kept (one cache for several tools, or
    for every process of a test session).
    """
    import jax

    # orbax logs (with tracebacks) through absl when a background save fails; charrnn reports such
    # failures itself in one line, so library logging is shown only with CHARRNN_DEBUG=1.
    if not os.environ.get("CHARRNN_DEBUG"):
        logging.getLogger("absl").setLevel(logging.CRITICAL)
        # orbax's background tasks that fail alongside a failed save (disk full) are logged by
        # asyncio when collected: the command's one-line error already says everything.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL + 1)
        _drop_background_io_reports()
    if os.environ.get("CHARRNN_NO_COMPILE_CACHE"):
        # JAX would still use a cache named by its own JAX_COMPILATION_CACHE_DIR
        jax.config.update("jax_enable_compilation_cache", False)
        return
    jax.config.update(
        "jax_compilation_cache_dir", os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(cache_dir() / "xla")
    )
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _drop_background_io_reports() -> None:
    """After a failed background save (disk full), tensorstore's I/O callbacks still try to reach
    orbax's already-closed asyncio loop and report "Event loop is closed" as unraisable exceptions
    (a bare traceback on stderr); likewise, when one array of a damaged checkpoint cannot be read,
    orbax's coroutines reading the others are dropped unfinished and report their own failures. They
    say nothing the user needs (the failure itself is reported in one line), so exactly these are
    dropped; every other report still reaches the previous hook."""
    previous = sys.unraisablehook
    if getattr(previous, "charrnn_filter", False):
        return

    def hook(report) -> None:
        if report.exc_type is RuntimeError and str(report.exc_value) == "Event loop is closed":
            return
        code = getattr(report.object, "cr_code", None)  # an orbax coroutine left unfinished when a
        if code is not None and "orbax" in code.co_filename:  # read failed: that failure is reported already
            return
        previous(report)

    hook.charrnn_filter = True
    sys.unraisablehook = hook
