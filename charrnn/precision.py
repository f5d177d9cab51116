"""The matmul precision charrnn chooses for the machine it runs on."""

import re


def default_dtype() -> str:
    """The matmul precision `train` uses unless told otherwise, chosen by measurement.

    GPUs and TPUs: bfloat16 (their matrix units are built for it). CPUs: bfloat16 where XLA runs
    the training step faster in bf16 than in float32 (`charrnn bench`; docs/measurements.md,
    Precision), float32 elsewhere; `bf16_pays` says which CPUs those are.
    """
    import jax

    if jax.default_backend() != "cpu":
        return "bfloat16"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            text = cpuinfo.read()
    except OSError:
        return "float32"
    return "bfloat16" if bf16_pays(text) else "float32"


def bf16_pays(cpuinfo: str) -> bool:
    """Whether a CPU (its /proc/cpuinfo text) trains faster in bf16: with AMX tiles, or with
    AVX-512-BF16 on AMD (Zen 4, Zen 5). Not on an Intel CPU with AVX-512-BF16 but no AMX (Cooper
    Lake, or a virtual machine whose host hides AMX): XLA's bf16 matmuls ran slower than its float32
    ones there, and without native bf16 instructions bf16 is only emulated."""
    flags = set(" ".join(re.findall(r"^flags\s*:(.*)$", cpuinfo, re.MULTILINE)).split())
    if "amx_bf16" in flags:
        return True
    return "avx512_bf16" in flags and "GenuineIntel" not in cpuinfo
