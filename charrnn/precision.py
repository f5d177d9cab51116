"""The matmul precision charrnn chooses for the machine it runs on."""


def default_dtype() -> str:
    """The matmul precision `train` uses unless told otherwise, chosen by measurement.

    GPUs and TPUs: bfloat16 (their matrix units are built for it). CPUs: bfloat16 where the
    processor has native bf16 dot-product instructions (AVX-512-BF16 or AMX), where XLA runs the
    training step faster in bf16 than in float32 (`charrnn bench`; docs/measurements.md,
    Precision); float32 elsewhere, where bf16 would only be emulated.
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
