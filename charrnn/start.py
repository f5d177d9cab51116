"""Starting to train: a new run, or one continued, set up for `fit` in one place.

`new_run` and `resume_run` do everything that comes before the first step: prepare the corpus,
fill in the settings left to charrnn (the precision by device; dropout and the weights' moving
average by how many epochs the budget covers, and at most `MAX_TIMED_EPOCHS` of them for a time
budget), refuse a model that cannot fit in memory, take the
run's lock, and write ``config.json`` and ``vocab.json``. Each is a context manager that holds the
lock and yields a `Start`, which trains with `Start.fit`. `charrnn train`, `charrnn bench` and the
tests call them alike.

Over several hosts every process calls the same function with the same arguments: process 0
alone takes the lock and writes the run, and the figures it measures (the epochs a time budget
covers) are every process's.

    >>> with new_run("shakespeare.txt", train={"time_seconds": 300}) as start:
    ...     for report in start.fit():
    ...         print(report)
"""

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from charrnn.config import (
    DEFAULT_EPOCHS,
    LONG_RUN_EMA,
    LONG_RUN_EPOCHS,
    MAX_TIMED_EPOCHS,
    WIDE_CELL,
    WIDE_FROM_EPOCHS,
    WIDE_LEARNING_RATE,
    ModelConfig,
    TrainConfig,
    auto_dropout,
    auto_dropout_and_weight_drop,
    auto_embed_size,
    auto_hidden_size,
    auto_weight_decay,
    memorising_load,
    widened_load,
)
from charrnn.corpus import BUILTIN_NAME, PreparedCorpus, find_prepared, prepare, rereadable
from charrnn.errors import ConfigError, CorpusError, RunError, Warn
from charrnn.paths import check_new_run_dir
from charrnn.runs import Run, fresh_run_dir

BUDGETS = ("steps", "epochs", "time_seconds", "patience")  # what a resumed run may change
# timing a --time budget's steps, after compiling them: this long, at most this share of the budget
PLAN_SECONDS, PLAN_SHARE = 4.0, 0.01  # longer than a shared host's slow spells (docs/text-quality.md, The plan)


@dataclasses.dataclass(frozen=True)
class Start:
    """A run ready for its first (or next) step: what `fit` takes, and what to tell the user."""

    run: Run
    corpus: PreparedCorpus
    cached: bool  # the corpus was found already prepared
    model: ModelConfig
    train: TrainConfig
    resuming: bool
    initial: tuple[Any, int] | None = None  # a parent's parameters and vocabulary size (new_run(parent=...))
    notes: tuple[str, ...] = ()  # what was chosen or done for the user ("dropout 0.25 (...)")

    def fit(self, placement: Any = None) -> Iterator[Any]:
        """Train: the reports of `charrnn.loop.fit` for this run, from its first or next step."""
        from charrnn.loop import fit

        return fit(
            self.run,
            self.corpus,
            self.model,
            self.train,
            resume=self.resuming,
            placement=placement,
            init_from=self.initial,
        )


class ResumeConflict(ConfigError):
    """Settings given for a resumed run that differ from the run's own (`fields`): a run continues
    as it was made; budgets alone may change."""

    def __init__(self, fields: Sequence[str]) -> None:
        self.fields = tuple(fields)
        super().__init__(None, self.worded_for(list(self.fields), "in another directory"))

    def worded_for(self, names: list[str], elsewhere: str) -> str:
        one = len(names) == 1
        return (
            f"{', '.join(names)} {'differs' if one else 'differ'} from the run being resumed; "
            f"drop {'it' if one else 'them'} or start a new run {elsewhere}"
        )


@contextlib.contextmanager
def new_run(
    corpus: str | Sequence[str] = BUILTIN_NAME,
    *,
    directory: Path | None = None,
    model: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    parent: Path | None = None,
    encoding: str = "utf-8",
    errors: str = "strict",
    min_count: int = 1,
    warn: Warn = lambda _: None,
) -> Iterator[Start]:
    """A new run of `corpus` (a path, ``-``, the built-in name, or several paths or a folder: documents)
    in `directory` (default: ``runs/<corpus name>``, numbered if taken), locked while the block runs.

    `model` and `train` are the settings given (ModelConfig and TrainConfig fields); the others
    are chosen: a budget of `DEFAULT_EPOCHS` when none is given, the device's precision, the
    embedding's width by the vocabulary's size (`auto_embed_size`), a wider model for a time budget
    long for the default one (`auto_hidden_size`; unless given, or taken from a parent; regularised as the
    default width's longest timed run), dropout by
    the planned epochs weighed by the model's size against the text's (`memorising_load`,
    `auto_dropout`; unless given, or taken from a parent), weight drop beside it
    (`auto_dropout_and_weight_drop`; unless either is given; one given lowers the chosen dropout as a
    chosen one does), weight decay by them
    (`auto_weight_decay`, unless given) and, for runs over
    `LONG_RUN_EPOCHS` epochs, a moving average of the weights (unless `ema` is given). A time budget
    alone (`time_seconds`, no `epochs` or `steps`) stops after `MAX_TIMED_EPOCHS` epochs if it covers
    more: past them a model only memorises its text (docs/text-quality.md, The budget used). `parent` is a
    run to start from (its best weights; a vocabulary its characters keep their ids in; its model
    unless given otherwise).
    """
    import jax

    from charrnn.report import run_section
    from charrnn.transfer import child_model_options, parent_of

    model, train = dict(model or {}), dict(train or {})
    sources = [corpus] if isinstance(corpus, str) else list(corpus)
    choose_dropout = "dropout" not in model and parent is None
    choose_weight_drop = choose_dropout and "weight_drop" not in model  # the two were measured together
    choose_width = "hidden_size" not in model and parent is None  # a parent's width is in `model` then
    choose_cell = "cell" not in model and parent is None
    choose_embed = "embed_size" not in model
    parent_run = parent_vocab = parent_params = None
    if parent is not None:  # its best weights are read first: a parent that has none fails before any work
        from charrnn.trained import load

        parent_run, parent_model, parent_vocab = parent_of(parent)
        model = child_model_options(parent_model, model, parent)
        parent_params = load(parent_run, "best", warn=warn).params
    if not train.keys() & {"steps", "epochs", "time_seconds"}:
        train["epochs"] = DEFAULT_EPOCHS
    train_config = TrainConfig(**train)
    leader = jax.process_index() == 0
    run = _new_run_directory(directory, sources, leader)
    prepared, cached = prepare(
        sources,
        val_fraction=train_config.val_fraction,
        encoding=encoding,
        errors=errors,
        base_vocab=parent_vocab,
        warn=warn,
        min_count=min_count,
    )
    if "dtype" not in model:
        from charrnn.precision import default_dtype

        model["dtype"] = default_dtype()
    if "embed_size" not in model:  # a parent's is in `model` already
        model["embed_size"] = auto_embed_size(len(prepared.vocab), model.get("hidden_size", ModelConfig.hidden_size))
    model_config = ModelConfig(vocab_size=len(prepared.vocab), **model)
    check_memory(model_config, train_config)
    model_config, train_config, chosen = _choose_for_the_budget(
        model_config,
        train_config,
        len(prepared.train),
        width=choose_width,
        cell=choose_cell,
        embed=choose_embed,
        dropout=choose_dropout,
        weight_drop=choose_weight_drop,
        ema="ema" not in train,
        weight_decay="weight_decay" not in train,
        learning_rate="learning_rate" not in train,
    )
    notes = list(chosen)
    with contextlib.ExitStack() as held:
        if leader:  # process 0 creates the run; the others train into it
            run.directory.mkdir(parents=True, exist_ok=True)
            held.enter_context(run.lock())
            prepared.vocab.save(run.vocab_path)
            section = run_section(model_config, parent_run.directory if parent_run is not None else None)
            record = _corpus_record(sources, prepared, min_count, parent_run)
            run.write_config(model_config, train_config, record, section)
        initial = None
        if parent_run is not None:  # every process starts from the parent's weights
            initial = (parent_params, len(parent_vocab))
            added = len(prepared.vocab) - len(parent_vocab)
            notes.append(
                f"initialised from {parent_run.directory} (best checkpoint); "
                + (
                    f"{added} new characters extend its vocabulary of {len(parent_vocab)}"
                    if added
                    else "same vocabulary"
                )
            )
        yield Start(run, prepared, cached, model_config, train_config, False, initial, tuple(notes))


@contextlib.contextmanager
def resume_run(
    directory: Path,
    *,
    corpus: str | Sequence[str] | None = None,
    model: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    encoding: str = "utf-8",
    errors: str = "strict",
    min_count: int | None = None,
    warn: Warn = lambda _: None,
) -> Iterator[Start]:
    """The run in `directory`, to continue from its latest checkpoint, locked while the block runs.

    Settings given in `model` and `train` must be the run's own (a `ResumeConflict` otherwise),
    except the budgets (`BUDGETS`), which may change. The corpus is the one the run names, or
    `corpus` if it moved, and must be the same text, byte for byte; one read from a pipe, or gone,
    is taken from the preparation cache.
    """
    import jax

    run = Run(Path(directory))
    loaded = run.open()
    model, train = dict(model or {}), dict(train or {})
    with contextlib.ExitStack() as held:
        if jax.process_index() == 0:
            held.enter_context(run.lock())  # refuse at once if another process trains this run
        saved = loaded.model.to_dict() | loaded.train.to_dict()
        fixed = {**model, **{k: v for k, v in train.items() if k not in BUDGETS}}
        if conflicts := [name for name, value in fixed.items() if value != saved[name]]:
            raise ResumeConflict(conflicts)
        saved_min_count = loaded.corpus.get("min_count", 1)
        if min_count is not None and min_count != saved_min_count:
            raise ResumeConflict(["min_count"])
        train_config = TrainConfig(**(loaded.train.to_dict() | {k: v for k, v in train.items() if k in BUDGETS}))
        prepared, cached = _corpus_again(run, loaded, corpus, train_config, encoding, errors, warn)
        yield Start(run, prepared, cached, loaded.model, train_config, True)


def _new_run_directory(directory: Path | None, sources: list[str], leader: bool) -> Run:
    """Where a new run goes, checked before any slow work: `directory`, or ``runs/<corpus name>``
    (numbered if taken); nothing there yet, or an empty directory."""
    if directory is None:
        if not leader:
            raise ConfigError("directory", "must be given for a run over several hosts (one every host shares)")
        first = sources[0]
        stem = "stdin" if first == "-" else (Path(first).absolute().name if Path(first).is_dir() else Path(first).stem)
        directory, label = fresh_run_dir(stem or "corpus"), "the run directory"
    else:
        label = "directory"
    if leader:
        check_run_directory(Path(directory), label)
    return Run(Path(directory))


def check_run_directory(directory: Path, label: str = "directory") -> None:
    """Where a new run may go: nowhere yet, or an empty directory; a run there is refused with the
    way to continue it, anything else with what it holds (`label` names the path's origin)."""
    if Run(directory).exists():
        raise RunError(
            f"{directory} already holds a run; continue it with {{resume}}", settings={"resume": str(directory)}
        )
    check_new_run_dir(directory, label)


def check_memory(model: ModelConfig, train: TrainConfig) -> None:
    """Refuse, before any slow work, a model and batch whose training cannot fit in memory."""
    from charrnn import memory

    memory.require(
        memory.training_bytes(model, train),
        f"training a {model.layers}×{model.hidden_size} {model.cell.upper()} ({model.parameter_count():,} "
        f"parameters) on batches of {train.batch_size} × {train.seq_len}",
    )


def _choose_for_the_budget(
    model: ModelConfig,
    train: TrainConfig,
    train_characters: int,
    *,
    width: bool,
    cell: bool,
    embed: bool,
    dropout: bool,
    weight_drop: bool,
    ema: bool,
    weight_decay: bool,
    learning_rate: bool,
) -> tuple[ModelConfig, TrainConfig, list[str]]:
    """Dropout, weight drop, weight decay and the weights' average for runs long enough to memorise the
    text (see `auto_dropout_and_weight_drop`, `auto_weight_decay`, `auto_ema` below), when not given;
    the width (`width`: not given; `auto_hidden_size`), and with it the wider model's cell (`cell`:
    not given) and peak learning rate (`learning_rate`: not given); the epochs of a time budget that
    covers more than `MAX_TIMED_EPOCHS` (`embed`: the embedding's width was not given, so it follows
    the model's); and what was chosen, in words."""
    timed = bool(train.time_seconds) and train.epochs is None and train.steps is None
    if not (dropout or ema or weight_decay or timed):  # weight drop is chosen only beside dropout
        return model, train, []
    epochs = _leaders_value(planned_epochs(model, train, train_characters))
    notes = []
    default_parameters = model.fitted_parameter_count()
    hidden = auto_hidden_size(epochs, default_parameters, train_characters) if timed and width else None
    widened = hidden is not None and hidden != model.hidden_size
    if widened:
        width_note = (
            f"a {model.layers}×{hidden} model: the time given covers about {epochs:.0f} epochs of the "
            f"{model.hidden_size}-unit one, more than {WIDE_FROM_EPOCHS:g}: a wider model uses them better"
        )
        embed_size = auto_embed_size(model.vocab_size, hidden) if embed else model.embed_size
        model = dataclasses.replace(model, hidden_size=hidden, embed_size=embed_size)
        also = []
        if cell:
            model = dataclasses.replace(model, cell=WIDE_CELL)
            also.append(f"cell {WIDE_CELL}")
        if learning_rate:
            train = dataclasses.replace(train, learning_rate=WIDE_LEARNING_RATE)
            also.append(f"peak learning rate {WIDE_LEARNING_RATE:g}")
        notes.append("; ".join([width_note, ", ".join(also)]) if also else width_note)
        check_memory(model, train)
        epochs = _leaders_value(planned_epochs(model, train, train_characters))
    if timed and epochs > MAX_TIMED_EPOCHS:
        notes.append(
            f"training stops after {MAX_TIMED_EPOCHS:g} epochs, though the time given covers about {epochs:.0f}: "
            "more epochs of one text measured worse (give an epochs budget to train longer)"
        )
        train, epochs = dataclasses.replace(train, epochs=MAX_TIMED_EPOCHS), MAX_TIMED_EPOCHS
    parameters = model.fitted_parameter_count()
    if widened:
        load = widened_load(epochs, default_parameters, train_characters)
    else:
        load = memorising_load(epochs, parameters, train_characters)
    chosen = []
    if weight_drop:  # chosen only beside a chosen dropout
        chosen_dropout, chosen_weight_drop = auto_dropout_and_weight_drop(load)
        model = dataclasses.replace(model, dropout=chosen_dropout, weight_drop=chosen_weight_drop)
    elif dropout:  # less where a given weight drop is over its first share
        model = dataclasses.replace(model, dropout=auto_dropout(load, model.weight_drop))
    if dropout:
        chosen.append(f"dropout {model.dropout:g}")
    if weight_drop and model.weight_drop:
        chosen.append(f"weight drop {model.weight_drop:g}")
    if weight_decay and (decay := auto_weight_decay(load)) != train.weight_decay:
        train = dataclasses.replace(train, weight_decay=decay)
        chosen.append(f"weight decay {decay:g}")
    if ema and (decay := auto_ema(epochs)):  # epochs as they are: the average needs many steps, not a large model
        train = dataclasses.replace(train, ema=decay)
        chosen.append(f"weights averaged with decay {decay:g}")
        check_memory(model, train)  # the average is one more copy of the weights
    per_character = parameters / max(1, train_characters)
    why = f"the budget covers about {epochs:.1f} epochs, with {per_character:.2g} parameters per training character"
    if widened:
        why = f"the budget covers about {epochs:.1f} epochs, weighed for the wider model as {load:.1f}"
    return model, train, notes + ([f"{', '.join(chosen)} ({why})"] if chosen else [])


def planned_epochs(model_config: ModelConfig, train_config: TrainConfig, train_characters: int) -> float:
    """How many passes over the training split the run's budget allows. A --time budget is turned
    into characters by timing compiled steps of this very model (compiling them, then a few
    seconds)."""
    windows = max(1, (train_characters - 1) // train_config.batch_size // train_config.seq_len)
    chars_per_epoch = windows * train_config.batch_size * train_config.seq_len
    estimates = []
    from charrnn.loop import step_budget

    if budget := step_budget(train_config, windows):
        estimates.append(budget / windows)
    if train_config.time_seconds:
        from charrnn.bench import steady_train_rate

        seconds = min(PLAN_SECONDS, PLAN_SHARE * train_config.time_seconds)
        rate = steady_train_rate(model_config, train_config, seconds)
        estimates.append(train_config.time_seconds * rate / chars_per_epoch)
    return min(estimates) if estimates else math.inf


def auto_ema(epochs: float) -> float:
    """The weights' moving average used when it is not given: for the same long runs, where it
    averages away the noise of a learning rate still high when the model starts to memorise; none
    for short runs, which end on a decayed learning rate that already averages (an average made
    them slightly worse; docs/measurements.md, Text quality)."""
    return LONG_RUN_EMA if epochs > LONG_RUN_EPOCHS else 0.0


def _leaders_value(value: float) -> float:
    """Process 0's `value` on every process (a measured figure that each host would see differently)."""
    import jax

    if jax.process_count() == 1:
        return value
    import numpy as np
    from jax.experimental import multihost_utils

    return float(multihost_utils.broadcast_one_to_all(np.float32(value)))


COUNTED_CHUNK = 1 << 24  # ids counted at a time


def _corpus_record(
    sources: list[str], prepared: PreparedCorpus, min_count: int, parent: Run | None = None
) -> dict[str, Any]:
    """config.json's "corpus" section: where the text was read and which text it was, and the
    characters of the vocabulary no training read (`untrained_record`)."""
    absolute = [str(Path(s).absolute()) if s not in ("-", BUILTIN_NAME) else s for s in sources]
    record = {
        "source": absolute[0] if len(absolute) == 1 else absolute,
        "sha256": prepared.stats["sha256"],
        "characters": prepared.stats["characters"],
    }
    if min_count > 1:
        record["min_count"] = min_count
    if prepared.stats.get("documents"):  # read by `sample`, which stops at the boundary by default
        record |= {"documents": prepared.stats["documents"], "boundary": prepared.stats["boundary"]}
    return record | untrained_record(prepared, parent)


def untrained_record(prepared: PreparedCorpus, parent: Run | None = None) -> dict[str, Any]:
    """{"untrained": the vocabulary's characters that neither the training split nor a parent's
    training read, "unseen_share": the share of text in characters training never read, by
    Good-Turing (characters read once, per character read)}, or {} when training read them all. The
    model's probability of such a character says nothing (its softmax column was only ever pushed
    down), so `check` puts a floor under it (charrnn.checking)."""
    counts = np.zeros(len(prepared.vocab), np.int64)
    for start in range(0, len(prepared.train), COUNTED_CHUNK):  # bincount copies its input to int64
        counts += np.bincount(prepared.train[start : start + COUNTED_CHUNK], minlength=len(prepared.vocab))
    untrained = {c for c, n in zip(prepared.vocab.chars, counts, strict=False) if n == 0}
    if parent is not None and untrained:  # the parent's weights were trained on its own text
        parent_chars = set(parent.read_vocab().chars)
        _, _, parent_corpus = parent.read_config()
        untrained &= set(parent_corpus.get("untrained", "")) | (untrained - parent_chars)
    if not untrained:
        return {}
    share = max(int(np.sum(counts == 1)), 1) / max(int(counts.sum()), 1)
    return {"untrained": "".join(sorted(untrained)), "unseen_share": share}


def _corpus_again(run, loaded, corpus, train_config: TrainConfig, encoding, errors, warn):
    """The resumed run's own text, prepared: from the cache when it cannot be read again (a pipe a
    shell handed over, ``<(zcat x.gz)``) or is gone; else read again, and refused if it changed."""
    info = loaded.corpus
    min_count = info.get("min_count", 1)
    source = corpus or info["source"]  # one path, or a list of documents' paths
    sources = [source] if isinstance(source, str) else list(source)
    pipes = [s for s in sources if s != "-" and not rereadable(s)]
    if not corpus and (pipes or not all(s in ("-", BUILTIN_NAME) or Path(s).exists() for s in sources)):
        prepared = find_prepared(info["sha256"], train_config.val_fraction, min_count=min_count, vocab=loaded.vocab)
        if prepared is not None:
            return prepared, True
        if pipes:
            raise CorpusError(
                f"{run.directory} was trained on text read from a pipe ({pipes[0]}), which is no longer "
                "cached; give the same text as FILE to resume"
            )
    try:
        # The run's own vocabulary, which is not the text's when the run was continued from a parent's.
        prepared, cached = prepare(
            source,
            val_fraction=train_config.val_fraction,
            encoding=encoding,
            errors=errors,
            base_vocab=loaded.vocab if min_count == 1 else None,
            warn=warn,
            min_count=min_count,
        )
    except CorpusError as error:
        if corpus:
            raise
        raise CorpusError(f"{error} (the corpus {run.config_path} names; give it as FILE if it moved)") from None
    if prepared.stats["sha256"] != info["sha256"]:
        raise RunError(
            f"the corpus {' '.join(sources)} has changed since {run.directory} was trained on it "
            "(its contents differ); start a new run instead"
        )
    return prepared, cached
