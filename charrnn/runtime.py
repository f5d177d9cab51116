"""Process-wide JAX settings, applied once by every command that computes."""

import os

from charrnn.paths import cache_dir


def configure_jax() -> None:
    """Turn on the persistent compilation cache (in the user's cache directory), so that a second
    `charrnn sample` or `charrnn train` loads its XLA programs instead of compiling them again.

    JAX caches only compiles slower than 1 s by default; most of ours are faster, so the threshold
    is lowered to 0. ``CHARRNN_NO_COMPILE_CACHE=1`` turns the cache off; JAX's own
    ``JAX_COMPILATION_CACHE_DIR``, when set, is where it is kept (one cache for several tools, or
    for every process of a test session).
    """
    import logging

    import jax

    # orbax logs (with tracebacks) through absl when a background save fails; charrnn reports such
    # failures itself in one line, so library logging is shown only with CHARRNN_DEBUG=1.
    if not os.environ.get("CHARRNN_DEBUG"):
        logging.getLogger("absl").setLevel(logging.CRITICAL)
    if os.environ.get("CHARRNN_NO_COMPILE_CACHE"):
        return
    jax.config.update(
        "jax_compilation_cache_dir", os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(cache_dir() / "xla")
    )
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def default_dtype() -> str:
    """The matmul precision `train` uses unless told otherwise, chosen by measurement.

    GPUs and TPUs: bfloat16 (their matrix units are built for it). CPUs: bfloat16 where the
    processor has native bf16 dot-product instructions (AVX-512-BF16 or AMX), where XLA ran the
    2×512 LSTM's training step about 1.6× faster than in float32 (`charrnn bench`); float32
    elsewhere, where bf16 would only be emulated.
    """
    import jax

    if jax.default_backend() != "cpu":
        return "bfloat16"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            flags = cpuinfo.read()
    except OSError:
        return "float32"
    return "bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"
