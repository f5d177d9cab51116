"""How much memory a batched command needs, and whether this machine has it: asked before allocating.

Every command that batches work (`train`, `sample --num`, and later ones such as scoring) estimates
its peak with a function here and calls `require`, so that a request larger than the machine is
refused in one line that says how much it needs and how much there is, instead of the kernel's
out-of-memory killer answering. The estimates are deliberately generous upper bounds of the large
arrays (parameters, optimizer state, recurrent state, activations, logits); small overheads are
covered by the fixed allowance.
"""

import os
from pathlib import Path

from charrnn.config import ModelConfig, TrainConfig
from charrnn.errors import UsageError

FLOAT = 4  # bytes per float32 (master weights, activations and accumulation are float32)
OVERHEAD = 256 << 20  # the runtime itself: XLA, compiled programs, Python


def available_bytes() -> int:
    """Memory this process can still use: the kernel's MemAvailable (free plus reclaimable cache), or
    less if a cgroup limit (a container, a systemd slice) leaves less; physical memory where neither
    is known."""
    candidates = [_meminfo_available(), _cgroup_room()]
    known = [value for value in candidates if value is not None]
    if known:
        return min(known)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    """The limit of this process's cgroup minus what it already uses (cgroup v2, then v1)."""
    try:
        relative = Path("/proc/self/cgroup").read_text().splitlines()[0].split(":", 2)[2].lstrip("/")
    except (OSError, IndexError):
        relative = ""
    places = [
        (Path("/sys/fs/cgroup") / relative / "memory.max", Path("/sys/fs/cgroup") / relative / "memory.current"),
        (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")),
        (Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"), Path("/sys/fs/cgroup/memory/memory.usage_in_bytes")),
    ]
    for limit_path, usage_path in places:
        try:
            limit_text = limit_path.read_text().strip()
            if limit_text == "max":
                return None
            limit, usage = int(limit_text), int(usage_path.read_text().strip())
        except (OSError, ValueError):
            continue
        return None if limit >= 1 << 60 else max(0, limit - usage)  # v1 reports "no limit" as a huge number
    return None


def _gates(model: ModelConfig) -> int:
    """Gate blocks of the model's cell (the width of its fused matmuls); imports JAX."""
    from charrnn.cells import REGISTRY

    return REGISTRY[model.cell].gates


def parameter_bytes(model: ModelConfig) -> int:
    return FLOAT * model.parameter_count()


def training_bytes(model: ModelConfig, train: TrainConfig) -> int:
    """Peak of a training step: parameters, gradients and two Adam moments (16 bytes a parameter;
    20 with the weights' moving average), plus what the backward pass keeps of a window (each
    layer's gate pre-activations and outputs at every time step, the logits and their gradient)."""
    tokens = train.batch_size * train.seq_len
    per_layer = (_gates(model) + 3) * model.hidden_size  # gates, cell state, output, input gradient
    activations = tokens * (model.embed_size + model.layers * per_layer + 3 * model.vocab_size) * FLOAT
    activations += tokens * _attention_per_token(model, train.seq_len) * FLOAT
    carry = _carry_bytes(model, train.batch_size)
    copies = 5 if train.ema else 4
    return copies * parameter_bytes(model) + 2 * activations + carry + OVERHEAD


def forward_bytes(model: ModelConfig, streams: int, length: int) -> int:
    """Peak of running `streams` sequences of `length` characters through the model without training
    (warming the sampler on a prime; scoring a batch of lines): the parameters, one layer's input
    projections and outputs at a time, the recurrent state, and the logits of every position."""
    tokens = streams * length
    per_layer = (_gates(model) + 2) * model.hidden_size
    activations = tokens * (model.embed_size + 2 * per_layer + model.vocab_size) * FLOAT + tokens * 4
    activations += tokens * _attention_per_token(model, length) * FLOAT
    carry = _carry_bytes(model, streams)
    return 2 * parameter_bytes(model) + 2 * activations + carry + OVERHEAD


def sampling_bytes(model: ModelConfig, streams: int, prime_length: int, chunk: int = 256) -> int:
    """Peak of `sample --num streams`: the prime warm-up, then per chunk the recurrent state (two
    chunks in flight), the logits with the sort of nucleus sampling, the chunk's ids and its text."""
    carry = 2 * _carry_bytes(model, streams)
    logits = 4 * streams * model.vocab_size * FLOAT
    tokens = 2 * streams * chunk * 4
    text = 3 * streams * (chunk * 4 + 64)  # decoded pieces: Python strings of up to 4 bytes a character
    chunks = 2 * parameter_bytes(model) + carry + logits + tokens + text + OVERHEAD
    prime = forward_bytes(model, streams, prime_length) if prime_length > 1 else 0
    return max(chunks, prime)


def _carry_bytes(model: ModelConfig, streams: int) -> int:
    """The recurrent state of every layer (h and c) and the attention's memory (keys, values, flags)."""
    memory = model.attention * (model.key_width + model.hidden_size + 1)
    return (2 * model.layers * model.hidden_size + memory) * streams * FLOAT


def _attention_per_token(model: ModelConfig, length: int) -> int:
    """Floats the attention keeps per position of a window: its scores, their softmax and gradient
    over the memory and the window, and a few [H] vectors (norms, query, mix)."""
    return 3 * (model.attention + length) + 6 * model.hidden_size if model.attention else 0


def require(needed: int, what: str, available: int | None = None) -> None:
    """Refuse `what` in one line if it needs more memory than there is."""
    available = available_bytes() if available is None else available
    if needed > available:
        raise UsageError(f"{what} needs about {_gib(needed)} of memory; this machine has {_gib(available)} available")


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 / 10 else f"{size / 2**20:.0f} MiB"
