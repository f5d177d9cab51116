"""Model and training configuration as frozen dataclasses: what a run is, in one JSON-able place."""

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Self

from charrnn.errors import UsageError

# The registered cells (charrnn/cells.py), by name: here so that `--help` can list them without
# importing JAX. A test checks that the two agree.
CELLS = ("lstm", "gru", "rnn", "lstm-peephole", "lstm-coupled", "lstm-ln", "gru-ln")
DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the network: embedding -> `layers` recurrent layers -> logits over the vocabulary."""

    vocab_size: int
    cell: str = "lstm"  # one of CELLS (charrnn/cells.py)
    layers: int = 2
    hidden_size: int = 512
    embed_size: int = 64
    dropout: float = 0.0  # applied to every layer's output, i.e. between layers and before the logits
    dtype: str = "float32"  # matmul operand precision; accumulation and master weights stay float32

    def __post_init__(self) -> None:
        _check(self.cell in CELLS, f"--cell must be one of {', '.join(CELLS)}, not {self.cell!r}")
        _check(self.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        _check(1 <= self.vocab_size, "the vocabulary is empty")
        _check(1 <= self.layers <= 64, f"--layers must be between 1 and 64, not {self.layers}")
        _check(1 <= self.hidden_size <= 65536, f"--hidden must be between 1 and 65536, not {self.hidden_size}")
        _check(1 <= self.embed_size <= 65536, f"--embed must be between 1 and 65536, not {self.embed_size}")
        _check(0.0 <= self.dropout < 1.0, f"--dropout must be in [0, 1), not {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})

    def parameter_count(self) -> int:
        """Trainable parameters, counted on the parameter tree (imports JAX; computes nothing)."""
        from charrnn.model import parameter_count

        return parameter_count(self)

    def check_fits_in_memory(self, available_bytes: int) -> None:
        """Refuse a model whose training state (params, gradients, two Adam moments) cannot fit."""
        count = self.parameter_count()
        needed = 16 * count
        if needed > available_bytes:
            raise UsageError(
                f"a {self.layers}×{self.hidden_size} {self.cell.upper()} has {count:,} parameters "
                f"and needs about {needed / 2**30:.1f} GiB to train; this machine has {available_bytes / 2**30:.1f} GiB"
            )


@dataclass(frozen=True)
class TrainConfig:
    """How to train: truncated BPTT over `batch_size` parallel streams, windows of `seq_len` characters."""

    batch_size: int = 32
    seq_len: int = 32
    learning_rate: float = 3e-3
    min_lr_fraction: float = 0.05  # cosine decay ends at learning_rate * min_lr_fraction
    warmup_steps: int = 20
    grad_clip: float = 5.0  # global-norm clipping threshold
    beta2: float = 0.999  # Adam's second-moment decay
    steps: int | None = None  # budgets: training stops at whichever is reached first
    epochs: float | None = None
    time_seconds: float | None = None
    patience: int | None = None  # stop after this many evaluations without a new best validation loss
    eval_every: int = 500  # steps between validation passes (and checkpoints)
    log_every: int = 10  # steps between fetching the loss from the device
    keep: int = 3  # newest checkpoints kept, besides the best one
    seed: int = 0
    val_fraction: float = 0.1
    max_val_chars: int = 1_000_000  # a validation pass reads at most this much of the split (its start)
    unroll: int | None = None  # lax.scan unroll of the time loop; None: the cell's default_unroll

    def __post_init__(self) -> None:
        _check(1 <= self.batch_size <= 1 << 20, f"--batch-size must be positive, not {self.batch_size}")
        _check(1 <= self.seq_len <= 1 << 20, f"--seq-len must be positive, not {self.seq_len}")
        _check(_finite_positive(self.learning_rate), f"--lr must be a positive number, not {self.learning_rate}")
        _check(_finite_positive(self.grad_clip), f"--grad-clip must be positive, not {self.grad_clip}")
        _check(0.0 <= self.min_lr_fraction <= 1.0, "min_lr_fraction must be in [0, 1]")
        _check(self.warmup_steps >= 0, f"--warmup must be >= 0, not {self.warmup_steps}")
        _check(self.steps is None or self.steps >= 1, f"--steps must be positive, not {self.steps}")
        _check(
            self.epochs is None or _finite_positive(self.epochs),
            f"--epochs must be positive, not {self.epochs}",
        )
        _check(
            self.time_seconds is None or _finite_positive(self.time_seconds),
            f"--time must be positive, not {self.time_seconds}",
        )
        _check(self.patience is None or self.patience >= 1, f"--patience must be positive, not {self.patience}")
        _check(self.eval_every >= 1, f"--eval-every must be positive, not {self.eval_every}")
        _check(self.log_every >= 1, "log_every must be positive")
        _check(self.keep >= 1, f"--keep must be positive, not {self.keep}")
        _check(0.0 < self.val_fraction < 1.0, f"--val-fraction must be in (0, 1), not {self.val_fraction}")
        _check(self.max_val_chars >= 2, f"max_val_chars must be at least 2, not {self.max_val_chars}")
        _check(self.unroll is None or self.unroll >= 1, f"--unroll must be positive, not {self.unroll}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


@dataclass(frozen=True)
class SampleOptions:
    """How to pick each next character."""

    temperature: float = 1.0  # 0 = greedy (argmax)
    top_k: int = 0  # keep only the k most likely characters (0 = all)
    top_p: float = 1.0  # nucleus: keep the smallest set whose probability reaches top_p

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise UsageError(f"--temp must be a number >= 0, not {self.temperature}")
        if self.top_k < 0:
            raise UsageError(f"--top-k must be >= 0, not {self.top_k}")
        if not (0 < self.top_p <= 1):
            raise UsageError(f"--top-p must be in (0, 1], not {self.top_p}")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``90``, ``90s``, ``10m``, ``1.5h`` or ``1h30m``."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    cleaned = text.strip().lower()
    total, number = 0.0, ""
    try:
        for char in cleaned:
            if char.isdigit() or char == ".":
                number += char
            elif char in units and number:
                total += float(number) * units[char]
                number = ""
            else:
                raise ValueError
        if number:
            total += float(number)
    except ValueError:
        total = math.nan
    if not cleaned or not _finite_positive(total):
        raise UsageError(f"--time must be a duration such as 300, 90s, 10m or 1h30m, not {text!r}")
    return total


def parse_checkpoint(which: str | int) -> str | int:
    """``best``, ``latest`` or a step number, as given to ``--checkpoint``."""
    if isinstance(which, int) or which in ("best", "latest"):
        return which
    step = int(which) if which.isdigit() else -1
    if step < 0:
        raise UsageError(f"--checkpoint must be best, latest or a step number, not {which!r}")
    return step


def _finite_positive(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)
