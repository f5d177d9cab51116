"""`charrnn train [FILE]`: truncated-BPTT training into a run directory, resumable."""

import contextlib
import dataclasses
import math
from pathlib import Path
from typing import Annotated

import typer

from charrnn.config import CELLS, DTYPES, ModelConfig, TrainConfig, check_text_options, parse_duration
from charrnn.errors import CorpusError, RunError, UsageError
from charrnn.paths import check_output_dir, runs_dir

from . import console
from .options import default_of, flag, flag_errors, given
from .prep_cmd import EncodingOption, ErrorsOption, ValFractionOption, show_stats

DEFAULT_EPOCHS = 10.0  # the budget when none of --steps/--epochs/--time is given


def _help(text: str, config_class: type, name: str) -> str:
    return f"{text} [default: {default_of(config_class, name)}]"


@flag_errors
def train(
    corpus: Annotated[
        str | None,
        typer.Argument(
            help="Text file (UTF-8), '-' for stdin, or 'pydoc' (built-in: Python's own documentation). "
            "Defaults to pydoc, or to the corpus of the run given with --resume.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run directory. [default: runs/<corpus name>]")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue this run from its latest checkpoint.")
    ] = None,
    cell: Annotated[str | None, typer.Option(help=_help(f"Cell: {', '.join(CELLS)}.", ModelConfig, "cell"))] = None,
    layers: Annotated[int | None, typer.Option(help=_help("Recurrent layers.", ModelConfig, "layers"))] = None,
    hidden: Annotated[
        int | None, typer.Option("--hidden", help=_help("Units per layer.", ModelConfig, "hidden_size"))
    ] = None,
    embed: Annotated[
        int | None, typer.Option("--embed", help=_help("Embedding size.", ModelConfig, "embed_size"))
    ] = None,
    dropout: Annotated[
        float | None,
        typer.Option(help="Dropout after each layer. [default: 0, or 0.25 when the budget covers over 4 epochs]"),
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(
            help=f"Matmul precision: {', '.join(DTYPES)}. [default: bfloat16 on GPU/TPU and on CPUs with native "
            "bf16 instructions, else float32]"
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", "-b", help=_help("Parallel streams.", TrainConfig, "batch_size")),
    ] = None,
    seq_len: Annotated[
        int | None,
        typer.Option("--seq-len", "-t", help=_help("Characters per BPTT window.", TrainConfig, "seq_len")),
    ] = None,
    lr: Annotated[
        float | None, typer.Option("--lr", help=_help("Peak learning rate.", TrainConfig, "learning_rate"))
    ] = None,
    grad_clip: Annotated[
        float | None, typer.Option(help=_help("Global gradient-norm clip.", TrainConfig, "grad_clip"))
    ] = None,
    warmup: Annotated[
        int | None, typer.Option("--warmup", help=_help("Warmup steps.", TrainConfig, "warmup_steps"))
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Stop after this many steps.", show_default=False)] = None,
    epochs: Annotated[
        float | None,
        typer.Option(help=f"Stop after this many epochs. [default: {DEFAULT_EPOCHS:g} if no budget is given]"),
    ] = None,
    time: Annotated[str | None, typer.Option("--time", help="Stop after this long, e.g. 300, 90s, 10m, 1h30m.")] = None,
    patience: Annotated[
        int | None,
        typer.Option(help="Stop after this many evaluations without a better validation loss.", show_default=False),
    ] = None,
    eval_every: Annotated[
        int | None,
        typer.Option(help=_help("Steps between validations/checkpoints.", TrainConfig, "eval_every")),
    ] = None,
    keep: Annotated[
        int | None, typer.Option(help=_help("Newest checkpoints kept (plus the best).", TrainConfig, "keep"))
    ] = None,
    seed: Annotated[int | None, typer.Option(help=_help("Random seed.", TrainConfig, "seed"))] = None,
    unroll: Annotated[
        int | None, typer.Option(help="Time-loop unroll factor. [default: 2 for rnn, 1 otherwise]", hidden=True)
    ] = None,
    val_fraction: ValFractionOption = None,
    encoding: EncodingOption = "utf-8",
    errors: ErrorsOption = "strict",
) -> None:
    """Train a character-level model; progress on stderr, checkpoints in the run directory."""
    check_text_options(encoding, errors)
    model_options = given(cell=cell, layers=layers, hidden_size=hidden, embed_size=embed, dropout=dropout, dtype=dtype)
    time_seconds = parse_duration(time) if time is not None else None
    budget_options = given(steps=steps, epochs=epochs, time_seconds=time_seconds, patience=patience)
    train_options = given(
        batch_size=batch_size,
        seq_len=seq_len,
        learning_rate=lr,
        grad_clip=grad_clip,
        warmup_steps=warmup,
        eval_every=eval_every,
        keep=keep,
        seed=seed,
        unroll=unroll,
        val_fraction=val_fraction,
    )
    _check_memory(ModelConfig(vocab_size=1, **model_options), TrainConfig(**train_options, **budget_options))
    if out is not None and resume is not None:
        raise UsageError("give --out or --resume, not both (a resumed run stays where it is)")
    if resume is not None:
        check_output_dir(resume, "--resume")
    else:
        check_output_dir(out, "--out") if out is not None else check_output_dir(runs_dir(), "the runs directory")

    from charrnn.runtime import configure_jax

    configure_jax()
    from charrnn.runs import Run

    with contextlib.ExitStack() as held:  # the run's lock, held from here until we exit
        if resume is not None:
            run, prepared, cached, model_config, train_config = _resume_run(
                Run(resume), corpus, model_options, train_options, budget_options, held, encoding, errors
            )
        else:
            run, prepared, cached, model_config, train_config = _new_run(
                corpus, out, model_options, train_options, budget_options, dropout is None, held, encoding, errors
            )
        show_stats(prepared.stats, prepared.directory, cached)
        _describe(run, model_config, train_config, resume is not None)
        finished = _run_with_progress(run, prepared, model_config, train_config, resume is not None)
        console.info(
            f"stopped ({finished.reason}) at step {finished.step}; best validation loss "
            f"{finished.best_val_loss:.4f} nats/char ({finished.best_val_loss / math.log(2):.4f} bits/char) "
            f"at step {finished.best_step}\n"
            f"run saved in {run.directory}; sample with: charrnn sample {run.directory}"
        )
        if finished.reason == "interrupted":
            console.info(f"resume with: charrnn train --resume {run.directory}")
            raise typer.Exit(128 + (finished.signal or 2))  # 130 for Ctrl-C, 143 for SIGTERM


def _resume_run(run, corpus, model_options, train_options, budget_options, held, encoding, errors):
    """The run to continue, checked against what was asked: same model and training options (budgets
    may change), and the same corpus, byte for byte."""
    from charrnn.corpus import prepare

    loaded = run.open()
    saved_model, saved_train, corpus_info = loaded.model, loaded.train, loaded.corpus
    held.enter_context(run.lock())  # refuse at once if another process trains this run
    saved = saved_model.to_dict() | saved_train.to_dict()
    conflicts = [name for name, value in {**model_options, **train_options}.items() if value != saved[name]]
    if conflicts:
        names = ", ".join(flag(name) for name in conflicts)
        raise UsageError(
            f"{names} {'differs' if len(conflicts) == 1 else 'differ'} from the run being resumed; "
            f"drop {'it' if len(conflicts) == 1 else 'them'} or start a new run with --out"
        )
    train_config = TrainConfig(**(saved_train.to_dict() | budget_options))
    source = corpus if corpus is not None else corpus_info["source"]
    try:
        prepared, cached = prepare(source, val_fraction=train_config.val_fraction, encoding=encoding, errors=errors)
    except CorpusError as error:
        if corpus is not None:
            raise
        raise CorpusError(f"{error} (the corpus {run.config_path} names; give it as FILE if it moved)") from None
    if prepared.stats["sha256"] != corpus_info["sha256"]:
        raise RunError(
            f"the corpus {source} has changed since {run.directory} was trained on it "
            "(its contents differ); start a new run instead"
        )
    return run, prepared, cached, saved_model, train_config


def _new_run(corpus, out, model_options, train_options, budget_options, choose_dropout, held, encoding, errors):
    """A new run directory, locked, with its vocabulary and configuration written; defaults filled in
    (10 epochs, the device's precision, dropout by the budget's length)."""
    from charrnn.corpus import prepare
    from charrnn.runs import Run, fresh_run_dir

    source = corpus if corpus is not None else "pydoc"
    if not budget_options.keys() & {"steps", "epochs", "time_seconds"}:
        budget_options = budget_options | {"epochs": DEFAULT_EPOCHS}
    train_config = TrainConfig(**train_options, **budget_options)
    stem = "stdin" if source == "-" else Path(source).stem or "corpus"
    run = Run(out if out is not None else fresh_run_dir(stem))
    if run.exists():
        raise RunError(f"{run.directory} already holds a run; continue it with --resume {run.directory}")
    check_output_dir(run.directory, "--out" if out is not None else "the run directory")
    prepared, cached = prepare(source, val_fraction=train_config.val_fraction, encoding=encoding, errors=errors)
    if "dtype" not in model_options:
        from charrnn.runtime import default_dtype

        model_options = model_options | {"dtype": default_dtype()}
    model_config = ModelConfig(vocab_size=len(prepared.vocab), **model_options)
    _check_memory(model_config, train_config)
    if choose_dropout:  # regularise only runs long enough to start memorising the text
        from charrnn.trainer import auto_dropout, planned_epochs

        epochs_planned = planned_epochs(model_config, train_config, len(prepared.train))
        model_config = dataclasses.replace(model_config, dropout=auto_dropout(epochs_planned))
        console.info(f"dropout {model_config.dropout:g} (the budget covers about {epochs_planned:.1f} epochs)")
    run.directory.mkdir(parents=True, exist_ok=True)
    held.enter_context(run.lock())
    prepared.vocab.save(run.vocab_path)
    corpus_info = {
        "source": str(Path(source).absolute()) if source not in ("-", "pydoc") else source,
        "sha256": prepared.stats["sha256"],
        "characters": prepared.stats["characters"],
    }
    run.write_config(model_config, train_config, corpus_info)
    return run, prepared, cached, model_config, train_config


def _check_memory(model: ModelConfig, train: TrainConfig) -> None:
    """Refuse, before any slow work, a model and batch whose training cannot fit in memory."""
    from charrnn import memory

    memory.require(
        memory.training_bytes(model, train),
        f"training a {model.layers}×{model.hidden_size} {model.cell.upper()} ({model.parameter_count():,} "
        f"parameters) on batches of {train.batch_size} × {train.seq_len}",
    )


def _describe(run, model_config: ModelConfig, train_config: TrainConfig, resuming: bool) -> None:
    budgets = [
        f"{train_config.steps} steps" if train_config.steps else "",
        f"{train_config.epochs:g} epochs" if train_config.epochs else "",
        f"{train_config.time_seconds:g}s" if train_config.time_seconds else "",
    ]
    console.info(
        f"{'resuming' if resuming else 'training'} {run.directory}: {model_config.layers}×{model_config.hidden_size} "
        f"{model_config.cell.upper()}, embed {model_config.embed_size}, dropout {model_config.dropout:g}, "
        f"{model_config.dtype}; batch {train_config.batch_size} × {train_config.seq_len} chars, lr "
        f"{train_config.learning_rate:g}; budget {', '.join(b for b in budgets if b)}"
    )


def _run_with_progress(run, prepared, model_config, train_config, resuming: bool):
    """Drive `fit`, rendering its reports: a rich bar on a terminal, plain lines otherwise."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from charrnn.trainer import EvalReport, Finished, Notice, StepReport, fit

    val_text = "val -"
    ticker = console.PlainTicker()
    reports = fit(run, prepared, model_config, train_config, resume=resuming)
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
