"""`charrnn train [FILE]`: truncated-BPTT training into a run directory, resumable."""

import contextlib
import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from charrnn.config import (
    CELLS,
    DTYPES,
    LONG_RUN_DROPOUT,
    LONG_RUN_EMA,
    LONG_RUN_EPOCHS,
    ModelConfig,
    TrainConfig,
    check_text_options,
    parse_duration,
)
from charrnn.errors import CharrnnError, CorpusError, RunError, UsageError
from charrnn.paths import check_new_run_dir, check_output_dir, runs_dir

from . import console
from .console import show_stats
from .options import (
    EncodingOption,
    ErrorsOption,
    ValFractionOption,
    budget_text,
    config_help,
    flag,
    flag_errors,
    given,
    nonempty_path,
    regularisation_text,
    require_nonempty,
    with_default,
)

DEFAULT_EPOCHS = 10.0  # the budget when none of --steps/--epochs/--time is given


@flag_errors
def train(
    corpus: Annotated[
        list[str] | None,
        typer.Argument(
            help="Text file (UTF-8), '-' for stdin, or 'pydoc' (built-in: Python's own documentation); a folder "
            "or several files are documents, joined with U+001E, the state reset between them. "
            "Defaults to pydoc, or to the corpus of the run given with --resume.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", parser=nonempty_path("--out"), help=with_default("Run directory.", "runs/<corpus name>")
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume", parser=nonempty_path("--resume"), help="Continue this run from its latest checkpoint."
        ),
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(
            "--init-from",
            parser=nonempty_path("--init-from"),
            help="Start a new run from this run's best weights (new characters extend its vocabulary; "
            "fresh optimizer; model options default to the parent's).",
        ),
    ] = None,
    cell: Annotated[
        str | None, typer.Option(help=config_help(f"Cell: {', '.join(CELLS)}.", ModelConfig, "cell"))
    ] = None,
    layers: Annotated[int | None, typer.Option(help=config_help("Recurrent layers.", ModelConfig, "layers"))] = None,
    hidden: Annotated[
        int | None, typer.Option("--hidden", help=config_help("Units per layer.", ModelConfig, "hidden_size"))
    ] = None,
    embed: Annotated[
        int | None, typer.Option("--embed", help=config_help("Embedding size.", ModelConfig, "embed_size"))
    ] = None,
    dropout: Annotated[
        float | None,
        typer.Option(
            help=with_default(
                "Dropout after each layer.",
                f"0, or {LONG_RUN_DROPOUT:g} when the budget covers over {LONG_RUN_EPOCHS:g} epochs",
            )
        ),
    ] = None,
    recurrent_dropout: Annotated[
        float | None,
        typer.Option(
            help=config_help(
                "Dropout on the recurrent connections, one mask per window.", ModelConfig, "recurrent_dropout"
            )
        ),
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(
            help=with_default(
                f"Matmul precision: {', '.join(DTYPES)}.",
                "bfloat16 on GPU/TPU and on CPUs with native bf16 instructions, else float32",
            )
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", "-b", help=config_help("Parallel streams.", TrainConfig, "batch_size")),
    ] = None,
    seq_len: Annotated[
        int | None,
        typer.Option("--seq-len", "-t", help=config_help("Characters per BPTT window.", TrainConfig, "seq_len")),
    ] = None,
    lr: Annotated[
        float | None, typer.Option("--lr", help=config_help("Peak learning rate.", TrainConfig, "learning_rate"))
    ] = None,
    grad_clip: Annotated[
        float | None, typer.Option(help=config_help("Global gradient-norm clip.", TrainConfig, "grad_clip"))
    ] = None,
    warmup: Annotated[
        int | None, typer.Option("--warmup", help=config_help("Warmup steps.", TrainConfig, "warmup_steps"))
    ] = None,
    ema: Annotated[
        float | None,
        typer.Option(
            help=with_default(
                "Validate, keep and sample a moving average of the weights with this decay (0: the raw weights).",
                f"0, or {LONG_RUN_EMA:g} when the budget covers over {LONG_RUN_EPOCHS:g} epochs",
            )
        ),
    ] = None,
    weight_decay: Annotated[
        float | None,
        typer.Option(
            help=config_help(
                "Decoupled weight decay (AdamW) of the weight matrices, times the learning rate.",
                TrainConfig,
                "weight_decay",
            )
        ),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Stop after this many steps.", show_default=False)] = None,
    epochs: Annotated[
        float | None,
        typer.Option(help=with_default("Stop after this many epochs.", f"{DEFAULT_EPOCHS:g} if no budget is given")),
    ] = None,
    time: Annotated[str | None, typer.Option("--time", help="Stop after this long, e.g. 300, 90s, 10m, 1h30m.")] = None,
    patience: Annotated[
        int | None,
        typer.Option(help="Stop after this many evaluations without a better validation loss.", show_default=False),
    ] = None,
    eval_every: Annotated[
        int | None,
        typer.Option(help=config_help("Steps between validations/checkpoints.", TrainConfig, "eval_every")),
    ] = None,
    keep: Annotated[
        int | None, typer.Option(help=config_help("Newest checkpoints kept (plus the best).", TrainConfig, "keep"))
    ] = None,
    seed: Annotated[int | None, typer.Option(help=config_help("Random seed.", TrainConfig, "seed"))] = None,
    unroll: Annotated[
        int | None,
        typer.Option(help=with_default("Time-loop unroll factor.", "the cell's own, by measurement"), hidden=True),
    ] = None,
    val_fraction: ValFractionOption = None,
    encoding: EncodingOption = "utf-8",
    errors: ErrorsOption = "strict",
    min_count: Annotated[
        int | None,
        typer.Option(
            "--min-count",
            min=1,
            help=with_default("Characters seen fewer times share one unknown symbol (never sampled).", "1"),
            show_default=False,
        ),
    ] = None,
    devices: Annotated[
        int | None,
        typer.Option(
            help=with_default("Train on this many of each machine's devices.", "all of them"), show_default=False
        ),
    ] = None,
    coordinator: Annotated[
        str | None,
        typer.Option(
            envvar="CHARRNN_COORDINATOR",
            help="Several hosts: HOST:PORT of process 0, which every process of the run reaches.",
            show_default=False,
        ),
    ] = None,
    num_processes: Annotated[
        int | None,
        typer.Option(envvar="CHARRNN_NUM_PROCESSES", help="Several hosts: how many processes.", show_default=False),
    ] = None,
    process_id: Annotated[
        int | None,
        typer.Option(
            envvar="CHARRNN_PROCESS_ID", help="Several hosts: this process's number, 0..N-1.", show_default=False
        ),
    ] = None,
) -> None:
    """Train a character-level model; progress on stderr, checkpoints in the run directory."""
    check_text_options(encoding, errors)
    require_nonempty("FILE", *(corpus or []))
    model_options = given(
        cell=cell,
        layers=layers,
        hidden_size=hidden,
        embed_size=embed,
        dropout=dropout,
        recurrent_dropout=recurrent_dropout,
        dtype=dtype,
    )
    time_seconds = parse_duration(time) if time is not None else None
    budget_options = given(steps=steps, epochs=epochs, time_seconds=time_seconds, patience=patience)
    train_options = given(
        batch_size=batch_size,
        seq_len=seq_len,
        learning_rate=lr,
        grad_clip=grad_clip,
        warmup_steps=warmup,
        ema=ema,
        weight_decay=weight_decay,
        eval_every=eval_every,
        keep=keep,
        seed=seed,
        unroll=unroll,
        val_fraction=val_fraction,
    )
    if resume is not None and init_from is not None:
        raise UsageError("give --resume (continue the same run) or --init-from (a new run from its weights), not both")
    if out is not None and resume is not None:
        raise UsageError("give --out or --resume, not both (a resumed run stays where it is)")
    asked_model = ModelConfig(vocab_size=1, **model_options)  # option mistakes are reported before JAX loads
    asked_train = TrainConfig(**train_options, **budget_options)
    if resume is not None:
        check_output_dir(resume, "--resume")
    else:
        _check_new_run_dir(out, "--out") if out is not None else check_output_dir(runs_dir(), "the runs directory")

    from .process import configure_jax

    configure_jax()
    _check_memory(asked_model, asked_train)  # counted on the parameter tree: fail before slow work
    from charrnn.placement import make_placement, start_distributed

    if coordinator is not None or num_processes is not None or process_id is not None:
        # `train` writes nothing to stdout, but the CPU collectives (gloo) print their connection
        # messages there from C++: stdout becomes stderr, so stdout stays clean for pipelines.
        os.dup2(2, 1)
        start_distributed(coordinator, num_processes, process_id)
        _relay_output()
    placement = make_placement(devices)
    if "batch_size" in train_options:
        placement.check_batch_size(train_options["batch_size"])
    from charrnn.runs import Run

    parent = None
    with contextlib.ExitStack() as held:  # the run's lock, held from here until we exit
        held.enter_context(_failure_ends_every_host())
        if resume is not None:
            run, prepared, cached, model_config, train_config = _resume_run(
                Run(resume), corpus, model_options, train_options, budget_options, held, encoding, errors, min_count
            )
        else:
            parent = _parent(init_from, model_options) if init_from is not None else None
            if parent is not None:
                model_options = parent.model_options
            run, prepared, cached, model_config, train_config = _new_run(
                corpus,
                out,
                model_options,
                train_options,
                budget_options,
                dropout is None and parent is None,
                held,
                encoding,
                errors,
                min_count or 1,
                parent,
            )
        # Every process starts from the parent's weights (a multi-host run's followers too).
        initial = _parent_weights(parent, prepared.vocab) if parent is not None else None
        if not _is_leader():  # one voice for the whole run: process 0's
            finished = _run_quietly(run, prepared, model_config, train_config, resume is not None, placement, initial)
            if finished.reason == "interrupted":
                raise typer.Exit(128 + (finished.signal or 2))
            return
        show_stats(prepared.stats, prepared.directory, cached)
        _describe(run, model_config, train_config, resume is not None, placement)
        finished = _run_with_progress(run, prepared, model_config, train_config, resume is not None, placement, initial)
        console.info(
            f"stopped ({finished.reason}) at step {finished.step}; best validation loss "
            f"{finished.best_val_loss:.4f} nats/char ({finished.best_val_loss / math.log(2):.4f} bits/char) "
            f"at step {finished.best_step}\n"
            f"run saved in {run.directory}; sample with: charrnn sample {run.directory}"
        )
        if finished.reason == "interrupted":
            console.info(f"resume with: charrnn train --resume {run.directory}")
            raise typer.Exit(128 + (finished.signal or 2))  # 130 for Ctrl-C, 143 for SIGTERM


def _resume_run(run, corpus, model_options, train_options, budget_options, held, encoding, errors, min_count):
    """The run to continue, checked against what was asked: same model and training options (budgets
    may change), and the same corpus, byte for byte."""
    from charrnn.corpus import find_prepared, prepare, rereadable

    loaded = run.open()
    saved_model, saved_train, corpus_info = loaded.model, loaded.train, loaded.corpus
    if _is_leader():
        held.enter_context(run.lock())  # refuse at once if another process trains this run
    saved = saved_model.to_dict() | saved_train.to_dict()
    conflicts = [name for name, value in {**model_options, **train_options}.items() if value != saved[name]]
    if conflicts:
        names = ", ".join(flag(name) for name in conflicts)
        raise UsageError(
            f"{names} {'differs' if len(conflicts) == 1 else 'differ'} from the run being resumed; "
            f"drop {'it' if len(conflicts) == 1 else 'them'} or start a new run with --out"
        )
    saved_min_count = corpus_info.get("min_count", 1)
    if min_count is not None and min_count != saved_min_count:
        raise UsageError("--min-count differs from the run being resumed; drop it or start a new run with --out")
    train_config = TrainConfig(**(saved_train.to_dict() | budget_options))
    source = corpus or corpus_info["source"]  # one path, or a list of documents' paths
    sources = [source] if isinstance(source, str) else source
    # A corpus read from a pipe a shell handed over (<(zcat x.gz)) cannot be read again, and one that
    # is gone cannot either: the run's own text is then taken from the preparation cache if it is
    # still there. (A file that is still there is read again, and refused if it has changed.)
    pipes = [s for s in sources if s != "-" and not rereadable(s)]
    if not corpus and (pipes or not all(s in ("-", "pydoc") or Path(s).exists() for s in sources)):
        prepared = find_prepared(
            corpus_info["sha256"], train_config.val_fraction, min_count=saved_min_count, vocab=loaded.vocab
        )
        if prepared is not None:
            return run, prepared, True, saved_model, train_config
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
            base_vocab=loaded.vocab if saved_min_count == 1 else None,
            warn=_warn,
            min_count=saved_min_count,
        )
    except CorpusError as error:
        if corpus:
            raise
        raise CorpusError(f"{error} (the corpus {run.config_path} names; give it as FILE if it moved)") from None
    if prepared.stats["sha256"] != corpus_info["sha256"]:
        raise RunError(
            f"the corpus {source if isinstance(source, str) else ' '.join(source)} has changed since "
            f"{run.directory} was trained on it "
            "(its contents differ); start a new run instead"
        )
    return run, prepared, cached, saved_model, train_config


@dataclasses.dataclass(frozen=True)
class _Parent:
    """The run given with --init-from."""

    run: Any
    vocab: Any
    model_options: dict[str, Any]  # the child's model options: the parent's, updated by the user's


def _parent(directory: Path, model_options: dict[str, Any]) -> _Parent:
    from charrnn.transfer import child_model_options, parent_of

    run, model_config, vocab = parent_of(directory)
    return _Parent(run, vocab, child_model_options(model_config, model_options, directory))


def _parent_weights(parent: _Parent, vocab) -> tuple[Any, int]:
    """The parent's best parameters and vocabulary size, for `fit(init_from=...)`."""
    from charrnn.trained import load

    params = load(parent.run, "best", warn=_warn).params
    added = len(vocab) - len(parent.vocab)
    console.info(
        f"initialised from {parent.run.directory} (best checkpoint); "
        + (f"{added} new characters extend its vocabulary of {len(parent.vocab)}" if added else "same vocabulary")
    )
    return params, len(parent.vocab)


def _new_run(
    corpus,
    out,
    model_options,
    train_options,
    budget_options,
    choose_dropout,
    held,
    encoding,
    errors,
    min_count,
    parent=None,
):
    """A new run directory, locked, with its vocabulary and configuration written; defaults filled in
    (10 epochs, the device's precision, dropout and the weights' average by the budget's length)."""
    from charrnn.corpus import prepare
    from charrnn.runs import Run, fresh_run_dir

    sources = corpus or ["pydoc"]
    if not budget_options.keys() & {"steps", "epochs", "time_seconds"}:
        budget_options = budget_options | {"epochs": DEFAULT_EPOCHS}
    train_config = TrainConfig(**train_options, **budget_options)
    first = sources[0]
    stem = "stdin" if first == "-" else (Path(first).absolute().name if Path(first).is_dir() else Path(first).stem)
    run = Run(out if out is not None else fresh_run_dir(stem or "corpus"))
    leader = _is_leader()
    if leader:  # decided before any slow work
        _check_new_run_dir(run.directory, "--out" if out is not None else "the run directory")
    elif out is None:
        raise UsageError("a run over several hosts needs --out (a directory every host shares)")
    prepared, cached = prepare(
        sources,
        val_fraction=train_config.val_fraction,
        encoding=encoding,
        errors=errors,
        base_vocab=parent.vocab if parent is not None else None,
        warn=_warn,
        min_count=min_count,
    )
    if "dtype" not in model_options:
        from charrnn.precision import default_dtype

        model_options = model_options | {"dtype": default_dtype()}
    model_config = ModelConfig(vocab_size=len(prepared.vocab), **model_options)
    _check_memory(model_config, train_config)
    choose_ema = "ema" not in train_options
    if choose_dropout or choose_ema:  # regularise and average only runs long enough to memorise the text
        from charrnn.trainer import auto_dropout, auto_ema, planned_epochs

        epochs_planned = _leaders_value(planned_epochs(model_config, train_config, len(prepared.train)))
        chosen = []
        if choose_dropout:
            model_config = dataclasses.replace(model_config, dropout=auto_dropout(epochs_planned))
            chosen.append(f"dropout {model_config.dropout:g}")
        if choose_ema and (ema := auto_ema(epochs_planned)):
            train_config = dataclasses.replace(train_config, ema=ema)
            chosen.append(f"weights averaged with decay {ema:g}")
            _check_memory(model_config, train_config)  # the average is one more copy of the weights
        if chosen:
            console.info(f"{', '.join(chosen)} (the budget covers about {epochs_planned:.1f} epochs)")
    if not leader:  # process 0 creates and describes the run; the others train into it
        return run, prepared, cached, model_config, train_config
    run.directory.mkdir(parents=True, exist_ok=True)
    held.enter_context(run.lock())
    prepared.vocab.save(run.vocab_path)
    absolute = [str(Path(source).absolute()) if source not in ("-", "pydoc") else source for source in sources]
    corpus_info = {
        "source": absolute[0] if len(absolute) == 1 else absolute,
        "sha256": prepared.stats["sha256"],
        "characters": prepared.stats["characters"],
    }
    if min_count > 1:
        corpus_info["min_count"] = min_count
    if prepared.stats.get("documents"):  # read by `sample`, which stops at the boundary by default
        corpus_info |= {"documents": prepared.stats["documents"], "boundary": prepared.stats["boundary"]}
    from charrnn.runinfo import run_section

    section = run_section(model_config, parent.run.directory if parent is not None else None)
    run.write_config(model_config, train_config, corpus_info, section)
    return run, prepared, cached, model_config, train_config


def _check_new_run_dir(directory: Path, label: str) -> None:
    """Where a new run may go: nowhere yet, or an empty directory; a run there is refused with the
    way to continue it, anything else with what it holds."""
    if (directory / "config.json").exists():
        raise RunError(f"{directory} already holds a run; continue it with --resume {directory}")
    check_new_run_dir(directory, label)


def _warn(text: str) -> None:
    console.info(f"charrnn: warning: {text}")


@contextlib.contextmanager
def _failure_ends_every_host():
    """Over several hosts, a process that fails says so in one line and leaves at once, without
    JAX's shutdown barrier (which would wait for hosts that are waiting for it in a collective):
    the coordination service then sees it gone and ends the other processes, each with one line of
    its own (`_relay_output`). A failure that is itself another process gone (a collective whose
    peer closed its connection: gloo says so before the heartbeat does) waits for that service to
    end this process too, so that its line names the process lost. Checkpoints are written to a
    temporary directory and renamed when complete, so the last complete one survives."""
    import jax

    try:
        yield
    except Exception as error:
        if jax.process_count() == 1 or not (isinstance(error, CharrnnError) or _peer_lost(error)):
            raise
        if _peer_lost(error):
            from charrnn.placement import HEARTBEAT_TIMEOUT

            time.sleep(HEARTBEAT_TIMEOUT + 5)  # normally ended before this by the coordination service
            error = CharrnnError(f"lost contact with another process of the run: {str(error).splitlines()[0]}")
        console.info(f"charrnn: error: process {jax.process_index()} of {jax.process_count()}: {error}")
        sys.stderr.flush()
        os._exit(getattr(error, "exit_code", 1))


def _peer_lost(error: Exception) -> bool:
    """Whether `error` comes from a collective (gloo) whose peer went away."""
    text = str(error)
    return "Gloo" in text and ("reset by peer" in text or "closed" in text.lower() or "Broken pipe" in text)


def _relay_output() -> None:
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


def _is_leader() -> bool:
    """Whether this process speaks for the run: the only one, or process 0 of several hosts."""
    import jax

    return jax.process_index() == 0


def _leaders_value(value: float) -> float:
    """Process 0's `value` on every process (a measured figure that each host would see differently)."""
    import jax

    if jax.process_count() == 1:
        return value
    import numpy as np
    from jax.experimental import multihost_utils

    return float(multihost_utils.broadcast_one_to_all(np.float32(value)))


def _check_memory(model: ModelConfig, train: TrainConfig) -> None:
    """Refuse, before any slow work, a model and batch whose training cannot fit in memory."""
    from charrnn import memory

    memory.require(
        memory.training_bytes(model, train),
        f"training a {model.layers}×{model.hidden_size} {model.cell.upper()} ({model.parameter_count():,} "
        f"parameters) on batches of {train.batch_size} × {train.seq_len}",
    )


def _describe(run, model_config: ModelConfig, train_config: TrainConfig, resuming: bool, placement) -> None:
    model_extra, train_extra = regularisation_text(model_config.to_dict(), train_config.to_dict())
    console.info(
        f"{'resuming' if resuming else 'training'} {run.directory}: {model_config.layers}×{model_config.hidden_size} "
        f"{model_config.cell.upper()}, embed {model_config.embed_size}, dropout {model_config.dropout:g}{model_extra}, "
        f"{model_config.dtype}; batch {train_config.batch_size} × {train_config.seq_len} chars, lr "
        f"{train_config.learning_rate:g}{train_extra}; budget {budget_text(train_config.to_dict())}"
        + (f"; data-parallel over {placement.size} devices" if placement.size > 1 else "")
    )


def _run_quietly(run, prepared, model_config, train_config, resuming: bool, placement, initial=None):
    """Drive `fit` without a word (the processes of a multi-host run other than process 0)."""
    from charrnn.trainer import Finished, fit

    reports = fit(run, prepared, model_config, train_config, resume=resuming, placement=placement, init_from=initial)
    for report in reports:
        if isinstance(report, Finished):
            return report
    raise AssertionError("fit ended without a Finished report")


def _run_with_progress(run, prepared, model_config, train_config, resuming: bool, placement, initial=None):
    """Drive `fit`, rendering its reports: a rich bar on a terminal, plain lines otherwise."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from charrnn.trainer import EvalReport, Finished, Notice, StepReport, fit

    val_text = "val -"
    ticker = console.PlainTicker()
    reports = fit(run, prepared, model_config, train_config, resume=resuming, placement=placement, init_from=initial)
    if not console.interactive():
        for report in reports:
            if isinstance(report, StepReport) and ticker.due():
                console.info(
                    f"step {report.step} epoch {report.epoch:.2f} loss {report.loss:.4f} lr {report.learning_rate:.2e} "
                    f"{report.chars_per_second:,.0f} chars/s elapsed {console.format_duration(report.elapsed)}"
                    + (f" ({report.progress:.0%})" if math.isfinite(report.progress) else "")
                )
            elif isinstance(report, EvalReport):
                console.info(
                    f"step {report.step} epoch {report.epoch:.2f} validation {report.val_loss:.4f} nats/char "
                    f"({report.val_loss / math.log(2):.3f} bits/char){' best' if report.is_best else ''}"
                )
            elif isinstance(report, Notice):
                console.info(f"charrnn: warning: {report.message}")
            elif isinstance(report, Finished):
                return report
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[loss]}  {task.fields[val]}  {task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console.stderr, redirect_stdout=False, redirect_stderr=False) as progress:
        task = progress.add_task("starting", total=1000, loss="", val=val_text, rate="")
        for report in reports:
            if isinstance(report, StepReport):
                progress.update(
                    task,
                    completed=1000 * report.progress if math.isfinite(report.progress) else None,
                    description=f"step {report.step} ep {report.epoch:.2f}",
                    loss=f"loss {report.loss:.3f}",
                    rate=f"{report.chars_per_second:,.0f} ch/s",
                )
            elif isinstance(report, EvalReport):
                val_text = f"val {report.val_loss:.3f}{'*' if report.is_best else ''}"
                progress.update(task, val=val_text)
                progress.console.print(
                    f"step {report.step} validation {report.val_loss:.4f} nats/char "
                    f"({report.val_loss / math.log(2):.3f} bits/char){' best' if report.is_best else ''}",
                    markup=False,
                )
            elif isinstance(report, Notice):
                progress.console.print(f"charrnn: warning: {report.message}", markup=False)
            elif isinstance(report, Finished):
                return report
    raise AssertionError("fit ended without a Finished report")
