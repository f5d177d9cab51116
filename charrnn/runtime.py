"""Process-wide JAX settings, applied once by every command that computes."""

import os

from charrnn.paths import cache_dir


def configure_jax() -> None:
    """Turn on the persistent compilation cache (in the user's cache directory), so that a second
    `charrnn sample` or `charrnn train` loads its XLA programs instead of compiling them again.

    JAX caches only compiles slower than 1 s by default; most of ours are faster, so the threshold
    is lowered to 0. ``CHARRNN_NO_COMPILE_CACHE=1`` turns the cache off.
    """
    import jax

    if os.environ.get("CHARRNN_NO_COMPILE_CACHE"):
        return
    jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
