"""Model and training configuration as frozen dataclasses: what a run is, in one JSON-able place."""

import codecs
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self, get_type_hints

from charrnn.errors import ConfigError


@dataclass(frozen=True)
class CellShape:
    """The shape of a cell's parameters, without JAX: its gate blocks (the fused matmuls of every
    layer are [*, gates × hidden]) and its own small parameters beyond the four every layer has
    (name -> shape, given the hidden size). `--help` lists the cells and `info` counts a run's
    parameters from these alone; the cell itself (charrnn/cells.py) takes its shapes from here."""

    gates: int
    own: Callable[[int], dict[str, tuple[int, ...]]] = lambda hidden: {}


# The registered cells (charrnn/cells.py), by name. A test checks that the two agree, and that
# every count computed from these shapes equals that of the parameter tree.
CELL_SHAPES = {
    "lstm": CellShape(4),
    "gru": CellShape(3),
    "rnn": CellShape(1),
    "lstm-peephole": CellShape(4, lambda hidden: {"peephole": (3, hidden)}),
    "lstm-coupled": CellShape(3),
    "lstm-ln": CellShape(
        4,
        lambda hidden: {
            "input_gain": (4 * hidden,),
            "recurrent_gain": (4 * hidden,),
            "cell_gain": (hidden,),
            "cell_shift": (hidden,),
        },
    ),
    "gru-ln": CellShape(3, lambda hidden: {"input_gain": (3 * hidden,), "recurrent_gain": (3 * hidden,)}),
    "lstm-coupled-mi": CellShape(3, lambda hidden: {"interaction": (3 * hidden,), "recurrent_gain": (3 * hidden,)}),
}
CELLS = tuple(CELL_SHAPES)
DEFAULT_EPOCHS = 10.0  # a new run's budget when none of steps, epochs or time_seconds is given
MAX_VOCAB = 0x110000  # every Unicode code point
MAX_COUNT = 1 << 62  # steps, patience...: far beyond any run, small enough for every integer type used
MAX_SEED = (1 << 63) - 1  # what jax.random.key accepts
DTYPES = ("float32", "bfloat16")
ATTENTION_KEYS = 128  # the attention head's query and key width (attention.py)
VAL_BURN_IN = 256  # characters of context before each stream of a validation pass (batching.evaluation_windows)
RESTART_EVERY = 32_768  # characters between a training stream's restarts from zero (StreamBatcher.restarts)
# Defaults that `charrnn train` chooses by the budget's length (charrnn.start), in planned epochs
# weighed by the model's size against the text's (`memorising_load`).
REFERENCE_PARAMETERS_PER_CHARACTER = 2.5  # tiny Shakespeare's default model, where the rules were measured
MAX_TIMED_EPOCHS = 40.0  # a time budget plans at most this many epochs: beyond, one text only memorises
LONG_RUN_EPOCHS = 4.0  # beyond this, a run is long enough to need a moving average of the weights
LONG_RUN_EMA = 0.999  # the weights' moving average's decay for such runs
DROPOUT_FREE_EPOCHS = 3.0  # up to this, no dropout: it would only slow learning
DROPOUT_PER_DOUBLING = 0.09  # then this much more for each doubling of the planned epochs...
MAX_AUTO_DROPOUT = 0.5  # ...up to this, a guard beyond the largest measured better (0.45)


def memorising_load(epochs: float, parameters: int, train_characters: int) -> float:
    """`epochs` planned epochs as the rules below count them: weighed by the model's parameters per
    training character against `REFERENCE_PARAMETERS_PER_CHARACTER`. A model with more parameters
    per character of its text memorises it in fewer epochs (docs/text-quality.md, The budget used)."""
    return epochs * parameters / max(1, train_characters) / REFERENCE_PARAMETERS_PER_CHARACTER


RULE_DECIMALS = 2  # the chosen regularisers are rounded this finely, no coarser: a rule that moved by steps
# let a plan a few percent off flip a run from one step to the next (docs/text-quality.md, Continuous rules)
RULE_STEP = 10.0**-RULE_DECIMALS


def _per_doubling(epochs: float, flat: float, start: float, step: float, most: float) -> float:
    """`start` up to `flat` planned epochs, then `step` more per doubling of them, at most `most`:
    the shape of every regulariser chosen by the budget."""
    return round(start + _grown(epochs, flat, step, most - start), RULE_DECIMALS)


def _grown(epochs: float, flat: float, step: float, most: float) -> float:
    """0 up to `flat` planned epochs, then `step` more per doubling of them, at most `most`: unrounded."""
    return min(most, step * math.log2(epochs / flat)) if epochs > flat else 0.0


def auto_dropout(epochs: float, weight_drop: float = 0.0) -> float:
    """The dropout a run of `epochs` planned epochs (counted by `memorising_load`) gets when none is
    given: it grows with the log of the epochs, as the memorising it must hold back does. Beside a
    `weight_drop` over `ADDED_WEIGHT_DROP`, less by the excess: in long runs, dropout moved to weight
    drop beat either one added to the other (docs/text-quality.md, Weight drop)."""
    full = _grown(epochs, DROPOUT_FREE_EPOCHS, DROPOUT_PER_DOUBLING, MAX_AUTO_DROPOUT)
    return max(0.0, round(full - max(0.0, weight_drop - ADDED_WEIGHT_DROP), RULE_DECIMALS))


WEIGHT_DROP_FREE_EPOCHS = 14.0  # up to this, no weight drop: its mask costs steps a short run cannot spare...
WEIGHT_DROP_PER_DOUBLING = 0.15  # ...then this much more for each doubling of the planned epochs...
MAX_AUTO_WEIGHT_DROP = 0.2  # ...up to this, the most measured better (docs/text-quality.md, Weight drop)
ADDED_WEIGHT_DROP = 0.12  # up to this, weight drop comes on top of the dropout; past it, out of it
LEAST_WEIGHT_DROP = 0.05  # below this, none: its mask costs a step's few percent at any rate


def auto_weight_drop(epochs: float) -> float:
    """The weight drop a run of `epochs` planned epochs (counted by `memorising_load`) gets where its
    dropout is chosen too: dropping single recurrent connections keeps the recurrence from leaning on
    any one of them, which dropout between the layers does not reach. None below `LEAST_WEIGHT_DROP`."""
    drop = round(_grown_weight_drop(epochs), RULE_DECIMALS)
    return drop if drop >= LEAST_WEIGHT_DROP else 0.0


def _grown_weight_drop(epochs: float) -> float:
    return _grown(epochs, WEIGHT_DROP_FREE_EPOCHS, WEIGHT_DROP_PER_DOUBLING, MAX_AUTO_WEIGHT_DROP)


def auto_dropout_and_weight_drop(epochs: float) -> tuple[float, float]:
    """The dropout and the weight drop a run of `epochs` planned epochs gets when it is given neither:
    the dropout less the weight drop's excess as both grow, before either is rounded, so that the
    dropout stays near what measured best beside a growing weight drop, never the high dropout beside
    a low weight drop that measured worse (docs/text-quality.md, The rule again)."""
    return auto_dropout(epochs, _grown_weight_drop(epochs)), auto_weight_drop(epochs)


FLAT_DECAY_EPOCHS = 6.0  # up to this, the weight decay TrainConfig defaults to (0.1)...
DECAY_PER_DOUBLING = 0.1  # ...then this much more for each doubling of the planned epochs...
MAX_AUTO_WEIGHT_DECAY = 0.6  # ...up to this, a guard beyond the largest measured better (0.5)


def auto_weight_decay(epochs: float) -> float:
    """The weight decay a run of `epochs` planned epochs (counted by `memorising_load`) gets when none
    is given: the default, then growing with the log of the epochs as `auto_dropout` does."""
    return _per_doubling(epochs, FLAT_DECAY_EPOCHS, TrainConfig.weight_decay, DECAY_PER_DOUBLING, MAX_AUTO_WEIGHT_DECAY)


SMALL_VOCABULARY = 512  # characters: up to this (alphabets, code), the embedding is ModelConfig's default...
EMBED_PER_DOUBLING = 2  # ...then this many times wider per doubling of the vocabulary, at most the hidden size


def auto_embed_size(vocab_size: int, hidden_size: int) -> int:
    """The embedding width a new run gets when none is given. Each character of a logographic script
    stands for a word's worth of meaning, and an alphabet's width was the quatrains' bottleneck: their
    loss fell with every doubling up to the hidden size (docs/measurements.md, Chinese quatrains)."""
    default = ModelConfig.embed_size
    if vocab_size <= SMALL_VOCABULARY:
        return default
    doublings = round(math.log2(vocab_size / SMALL_VOCABULARY))
    return max(default, min(hidden_size, default * EMBED_PER_DOUBLING**doublings))


WIDE_HIDDEN_SIZE = 768  # the width a time budget long for the default model trains instead...
WIDE_FROM_EPOCHS = 20.0  # ...where it covers more than this many epochs of the default model...
WIDE_PARAMETERS_PER_CHARACTER = 2 * REFERENCE_PARAMETERS_PER_CHARACTER  # ...and that model is this small for its text
WIDENED_EPOCH_WEIGHT = 1.5  # ...and the rules count its epochs as this many of the default's (at least the edge's)
WIDE_CELL = "lstm-coupled-mi"  # ...and it is this cell (more learnt per step there, at little more cost per step)...
WIDE_LEARNING_RATE = 5e-3  # ...trained at this peak learning rate (TrainConfig's 3e-3 and 4e-3 measured worse there)


def widened_load(epochs: float, default_parameters: int, train_characters: int) -> float:
    """A widened model's `epochs` as the rules count them: each as `WIDENED_EPOCH_WEIGHT` of the
    default width's (more than its own count, less than its parameters would weigh them), and never
    less than the default width's load at `WIDE_FROM_EPOCHS`, so that the regularisation does not
    drop where the model widens (docs/text-quality.md, Widening from 20 planned epochs)."""
    weighed = WIDENED_EPOCH_WEIGHT * memorising_load(epochs, default_parameters, train_characters)
    return max(weighed, memorising_load(WIDE_FROM_EPOCHS, default_parameters, train_characters))


def auto_hidden_size(epochs: float, parameters: int, train_characters: int) -> int:
    """The width a time budget gets when none is given, from the `epochs` it covers of the default
    model (`parameters` of them): the default, unless the time covers more than `WIDE_FROM_EPOCHS`
    of them on a text large for it. There the default width gains little from more of them (and
    stops after `MAX_TIMED_EPOCHS`), where a wider model's fewer epochs measured better
    (docs/text-quality.md, A wider model for a long budget). A text the default model memorises early
    (a large vocabulary's embedding and output) keeps the default: a wider model would only memorise
    it sooner."""
    small_for_its_text = parameters / max(1, train_characters) <= WIDE_PARAMETERS_PER_CHARACTER
    return WIDE_HIDDEN_SIZE if epochs > WIDE_FROM_EPOCHS and small_for_its_text else ModelConfig.hidden_size


AUTO_DROPOUT_RULE = (
    f"0 up to {DROPOUT_FREE_EPOCHS:g} planned epochs (times the model's parameters per training character over "
    f"{REFERENCE_PARAMETERS_PER_CHARACTER:g}), then {DROPOUT_PER_DOUBLING:g} more per doubling of them, "
    f"to the nearest {RULE_STEP:g} ({auto_dropout(2 * DROPOUT_FREE_EPOCHS):g} at {2 * DROPOUT_FREE_EPOCHS:g}), "
    f"at most {MAX_AUTO_DROPOUT:g}; less whatever a weight drop, chosen or given, adds past {ADDED_WEIGHT_DROP:g}"
)


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the network: embedding -> `layers` recurrent layers -> logits over the vocabulary."""

    vocab_size: int
    cell: str = "lstm-coupled"  # one of CELLS; the default by measurement (docs/how-it-works.md, Cells)
    layers: int = 2
    hidden_size: int = 512
    embed_size: int = 64
    dropout: float = 0.0  # applied to every layer's output, i.e. between layers and before the logits
    recurrent_dropout: float = 0.0  # on h where it enters the recurrence, one mask per window (recurrence.py)
    weight_drop: float = 0.0  # DropConnect on each recurrent kernel, one mask per layer and window (model.py)
    dtype: str = "float32"  # matmul operand precision; accumulation and master weights stay float32
    bidirectional: bool = False  # a second stack reads right to left; each character is predicted from both sides
    lookahead: int = 32  # bidirectional: characters past a window the backward stack reads first (bidirectional.py)
    direction_heads: bool = True  # bidirectional: each stack has its own output layer too, a language model one way
    direction_weight: float = 0.5  # the share of those layers' gradient the stacks get (0: none; by measurement)
    attention: int = 0  # positions one attention head over the top layer reads back; 0: none (attention.py)
    attention_keys: int = ATTENTION_KEYS  # the head's query and key width; 0: the values are the keys (older runs)

    def __post_init__(self) -> None:
        _check_types(self)
        _check(self.cell in CELLS, "cell", f"must be one of {', '.join(CELLS)}, not {self.cell!r}")
        _check(self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        _check(
            1 <= self.vocab_size <= MAX_VOCAB, "vocab_size", f"must be between 1 and {MAX_VOCAB}, not {self.vocab_size}"
        )
        _check(1 <= self.layers <= 64, "layers", f"must be between 1 and 64, not {self.layers}")
        _check(1 <= self.hidden_size <= 65536, "hidden_size", f"must be between 1 and 65536, not {self.hidden_size}")
        _check(1 <= self.embed_size <= 65536, "embed_size", f"must be between 1 and 65536, not {self.embed_size}")
        _check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), not {self.dropout}")
        _check(
            0.0 <= self.recurrent_dropout < 1.0,
            "recurrent_dropout",
            f"must be in [0, 1), not {self.recurrent_dropout}",
        )
        _check(0.0 <= self.weight_drop < 1.0, "weight_drop", f"must be in [0, 1), not {self.weight_drop}")
        _check(
            0.0 <= self.direction_weight <= 1.0,
            "direction_weight",
            f"must be in [0, 1], not {self.direction_weight}",
        )
        _check(0 <= self.lookahead <= 1 << 16, "lookahead", f"must be between 0 and {1 << 16}, not {self.lookahead}")
        _check(0 <= self.attention <= 1 << 16, "attention", f"must be between 0 and {1 << 16}, not {self.attention}")
        _check(
            0 <= self.attention_keys <= 65536,
            "attention_keys",
            f"must be between 0 and 65536, not {self.attention_keys}",
        )
        _check(
            not (self.attention and self.bidirectional),
            "attention",
            "is for models that write left to right; a bidirectional model already sees both sides",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return _from_dict(cls, data)

    @property
    def key_width(self) -> int:
        """The attention head's query and key width: `attention_keys`, at most the hidden size (wider
        keys add nothing); 0 for the form whose keys are the hidden-wide outputs themselves."""
        return min(self.attention_keys, self.hidden_size)

    @property
    def stacks(self) -> int:
        """Recurrent stacks: one reading left to right, and for a bidirectional model one reading back."""
        return 2 if self.bidirectional else 1

    def parameter_count(self) -> int:
        """Trainable parameters: embedding, every layer's four weights and biases and the cell's own
        parameters, output layer; from `CELL_SHAPES` alone, so that `info` and `runs` need no JAX."""
        shape = CELL_SHAPES[self.cell]
        width = shape.gates * self.hidden_size
        own = sum(math.prod(size) for size in shape.own(self.hidden_size).values())
        count = self.vocab_size * self.embed_size + self.stacks * self.hidden_size * self.vocab_size + self.vocab_size
        for layer in range(self.layers):
            inputs = self.embed_size if layer == 0 else self.hidden_size
            count += self.stacks * ((inputs + self.hidden_size + 2) * width + own)
        if self.attention and self.key_width:  # query and key kernels; query bias, norm, 2 gates; value gate, 2 norms
            count += (2 * self.hidden_size + 5) * self.key_width + 5 * self.hidden_size
        elif self.attention:  # query kernel and bias, three gates, three layer norms' scales and biases
            count += self.hidden_size * self.hidden_size + 10 * self.hidden_size
        return count + self._direction_head_count()

    def fitted_parameter_count(self) -> int:
        """The parameters that fit the text, for the rules that weigh a model against it: all but the
        direction heads, which read the stacks' states and add nothing to the cloze's capacity."""
        return self.parameter_count() - self._direction_head_count()

    def _direction_head_count(self) -> int:
        """Each stack's own output layer's kernel and bias, for a bidirectional model that has them."""
        if not (self.bidirectional and self.direction_heads):
            return 0
        return self.stacks * (self.hidden_size + 1) * self.vocab_size


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
    ema: float = 0.0  # decay of the weights' moving average used to validate and sample (0: the raw weights)
    weight_decay: float = 0.1  # decoupled (AdamW), of the weight matrices only; by measurement (docs/measurements.md)
    steps: int | None = None  # budgets: training stops at whichever is reached first
    epochs: float | None = None
    time_seconds: float | None = None
    patience: int | None = None  # stop after this many evaluations without a new best validation loss
    eval_every: int = 500  # steps between validation passes (and checkpoints)
    log_every: int = 20  # steps between fetching the loss from the device
    keep: int = 3  # newest checkpoints kept, besides the best one
    seed: int = 0
    val_fraction: float = 0.1
    max_val_chars: int = 1_000_000  # a validation pass reads at most this much of the split (its start)
    val_burn_in: int = VAL_BURN_IN  # context each validation stream reads before it counts (batching.py)
    # characters a stream reads before its state restarts from zero, staggered over the streams, where
    # an epoch is longer (batching.py); 0: only at each epoch's start
    restart_every: int = RESTART_EVERY
    unroll: int | None = None  # lax.scan unroll of the time loop; None: the cell's default_unroll

    def __post_init__(self) -> None:
        _check_types(self)
        _check(1 <= self.batch_size <= 1 << 20, "batch_size", f"must be between 1 and {1 << 20}, not {self.batch_size}")
        _check(1 <= self.seq_len <= 1 << 20, "seq_len", f"must be between 1 and {1 << 20}, not {self.seq_len}")
        _check(
            _finite_positive(self.learning_rate),
            "learning_rate",
            f"must be a positive number, not {self.learning_rate}",
        )
        _check(_finite_positive(self.grad_clip), "grad_clip", f"must be positive, not {self.grad_clip}")
        _check(0.0 <= self.min_lr_fraction <= 1.0, "min_lr_fraction", f"must be in [0, 1], not {self.min_lr_fraction}")
        _check(
            0.0 <= self.warmup_steps <= MAX_COUNT,
            "warmup_steps",
            f"must be between 0 and {MAX_COUNT}, not {self.warmup_steps}",
        )
        _check(0.0 < self.beta2 < 1.0, "beta2", f"must be in (0, 1), not {self.beta2}")
        _check(0.0 <= self.ema < 1.0, "ema", f"must be in [0, 1), not {self.ema}")
        _check(0.0 <= self.weight_decay <= 1.0, "weight_decay", f"must be between 0 and 1, not {self.weight_decay}")
        _check(
            self.steps is None or 1 <= self.steps <= MAX_COUNT,
            "steps",
            f"must be between 1 and {MAX_COUNT}, not {self.steps}",
        )
        _check(self.epochs is None or _finite_positive(self.epochs), "epochs", f"must be positive, not {self.epochs}")
        _check(
            self.time_seconds is None or _finite_positive(self.time_seconds),
            "time_seconds",
            f"must be positive, not {self.time_seconds}",
        )
        _check(
            self.patience is None or 1 <= self.patience <= MAX_COUNT,
            "patience",
            f"must be between 1 and {MAX_COUNT}, not {self.patience}",
        )
        _check(
            1 <= self.eval_every <= MAX_COUNT, "eval_every", f"must be between 1 and {MAX_COUNT}, not {self.eval_every}"
        )
        _check(
            1 <= self.log_every <= MAX_COUNT, "log_every", f"must be between 1 and {MAX_COUNT}, not {self.log_every}"
        )
        _check(1 <= self.keep <= 10_000, "keep", f"must be between 1 and 10000, not {self.keep}")
        check_seed(self.seed)
        _check(0.0 < self.val_fraction < 1.0, "val_fraction", f"must be in (0, 1), not {self.val_fraction}")
        _check(2 <= self.max_val_chars <= 1 << 62, "max_val_chars", f"must be at least 2, not {self.max_val_chars}")
        _check(
            0 <= self.val_burn_in <= 1 << 20, "val_burn_in", f"must be between 0 and {1 << 20}, not {self.val_burn_in}"
        )
        _check(self.unroll is None or 1 <= self.unroll <= 64, "unroll", f"must be between 1 and 64, not {self.unroll}")
        _check(
            0 <= self.restart_every <= 1 << 40,
            "restart_every",
            f"must be between 0 and {1 << 40}, not {self.restart_every}",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return _from_dict(cls, data)


@dataclass(frozen=True)
class SampleOptions:
    """How to pick each next character."""

    temperature: float = 1.0  # 0 = greedy (argmax)
    top_k: int = 0  # keep only the k most likely characters (0 = all)
    top_p: float = 1.0  # nucleus: keep the smallest set whose probability reaches top_p

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ConfigError("temperature", f"must be a number >= 0, not {self.temperature}")
        if self.top_k < 0:
            raise ConfigError("top_k", f"must be >= 0, not {self.top_k}")
        if not (0 < self.top_p <= 1):
            raise ConfigError("top_p", f"must be in (0, 1], not {self.top_p}")


UNKNOWN_POLICIES = ("error", "skip")  # characters a model never saw, in text to score: refuse, or leave out


def check_reading(unknown: str = "error", streams: int = 1) -> None:
    """How text is read for scoring and evaluation: checked once, for the library and, before any
    slow work, for the commands."""
    if unknown not in UNKNOWN_POLICIES:
        raise ConfigError("unknown", f"must be error or skip, not {unknown!r}")
    if streams < 1:
        raise ConfigError("streams", f"must be positive, not {streams}")


def check_capacity(slots: int, queue: int) -> None:
    """A server's sampling slots per model and the requests that may wait for one."""
    if slots < 1:
        raise ConfigError("slots", f"must be positive, not {slots}")
    if queue < 0:
        raise ConfigError("queue", f"must be >= 0, not {queue}")


def check_seed(seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError("seed", f"must be between 0 and {MAX_SEED}, not {seed}")


ERROR_HANDLERS = ("strict", "replace", "ignore")


def check_text_options(encoding: str, errors: str) -> None:
    """Accept exactly what the options document: a text encoding that Python knows (not a bytes
    transform such as base64 or rot13, which `codecs` also looks up by name), and one of the three
    error handlers listed (not any handler some library registered)."""
    if errors not in ERROR_HANDLERS:
        raise ConfigError("errors", f"must be strict, replace or ignore, not {errors!r}")
    try:
        info = codecs.lookup(encoding)
    except (LookupError, ValueError, TypeError):
        raise ConfigError("encoding", f"unknown {{name}} {encoding!r}") from None
    if not getattr(info, "_is_text_encoding", True):
        raise ConfigError("encoding", f"{encoding!r} is not a text encoding (it transforms bytes)")


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
        raise ConfigError("time_seconds", f"must be a duration such as 300, 90s, 10m or 1h30m, not {text!r}")
    return total


def parse_checkpoint(which: str | int) -> str | int:
    """``best``, ``latest`` or a step number, as given to ``--checkpoint``."""
    if isinstance(which, int) or which in ("best", "latest"):
        return which
    step = int(which) if which.isdigit() else -1
    if step < 0:
        raise ConfigError("checkpoint", f"must be best, latest or a step number, not {which!r}")
    return step


def _finite_positive(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def _check(condition: bool, name: str, problem: str) -> None:
    if not condition:
        raise ConfigError(name, problem)


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def _allowed_types(hint: Any) -> tuple[type, ...]:
    """The JSON-level types a field of type `hint` accepts (a float field also takes an int)."""
    types = getattr(hint, "__args__", None) or (hint,)
    allowed = tuple(type(None) if t is None else t for t in types)
    return allowed + (int,) if float in allowed else allowed


def _check_types(config: Any) -> None:
    """Every field has its declared type (bool is not an int, a string is not a number), so that a
    config read from JSON cannot smuggle `"16"` or `true` into a shape."""
    hints = get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        allowed = _allowed_types(hints[f.name])
        if isinstance(value, bool) != (bool in allowed) or not isinstance(value, allowed):
            names = " or ".join(_TYPE_NAMES[t] for t in allowed if t is not int or float not in allowed)
            raise ConfigError(f.name, f"must be {names}, not {json_repr(value)}")


def json_repr(value: Any) -> str:
    """A value as it reads in a JSON file, shortened for a one-line message."""
    import json

    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _from_dict(cls: type, data: Any) -> Any:
    """`cls` from its `to_dict()` form. Unknown keys are an error (never silently dropped: a key
    from a newer version or a typo would otherwise change nothing without a word); keys missing
    from `data` take their defaults, so that fields added later keep older files loading."""
    if not isinstance(data, dict):
        raise ConfigError(None, f"must be a JSON object, not {json_repr(data)}")
    names = {f.name for f in dataclasses.fields(cls)}
    if unknown := sorted(set(data) - names, key=str):
        raise ConfigError(str(unknown[0]), "is not a known setting")
    try:
        return cls(**data)
    except TypeError as error:  # a field without default is missing
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in data and f.default is dataclasses.MISSING]
        raise ConfigError(missing[0] if missing else None, "is missing") from error


AUTO_WEIGHT_DECAY_RULE = (
    f"{TrainConfig.weight_decay:g} up to {FLAT_DECAY_EPOCHS:g} planned epochs (counted as for dropout), "
    f"then {DECAY_PER_DOUBLING:g} more "
    f"per doubling of them, to the nearest {RULE_STEP:g} ({auto_weight_decay(4 * FLAT_DECAY_EPOCHS):g} at "
    f"{4 * FLAT_DECAY_EPOCHS:g}), at most {MAX_AUTO_WEIGHT_DECAY:g}"
)
AUTO_WEIGHT_DROP_RULE = (
    f"0 up to {WEIGHT_DROP_FREE_EPOCHS:g} planned epochs (counted as for dropout) or where a dropout is given, "
    f"then {WEIGHT_DROP_PER_DOUBLING:g} more per doubling of them, to the nearest {RULE_STEP:g} (none below "
    f"{LEAST_WEIGHT_DROP:g}), at most "
    f"{MAX_AUTO_WEIGHT_DROP:g}; past {ADDED_WEIGHT_DROP:g}, out of the dropout ({auto_weight_drop(30.0):g} at 30: "
    f"dropout {auto_dropout_and_weight_drop(30.0)[0]:g} instead of {auto_dropout(30.0):g})"
)
AUTO_HIDDEN_RULE = (
    f"{ModelConfig.hidden_size}; {WIDE_HIDDEN_SIZE} for a time budget alone that covers more than {WIDE_FROM_EPOCHS:g} "
    f"epochs of the {ModelConfig.hidden_size}-unit model, where that has at most {WIDE_PARAMETERS_PER_CHARACTER:g} "
    "parameters per training character"
)
AUTO_EMBED_RULE = (
    f"{ModelConfig.embed_size} up to {SMALL_VOCABULARY} distinct characters, then {EMBED_PER_DOUBLING}× per doubling "
    f"of them, at most the hidden size ({auto_embed_size(6257, ModelConfig.hidden_size)} for the 6,257 of "
    "Chinese quatrains)"
)
