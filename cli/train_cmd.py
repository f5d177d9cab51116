"""`charrnn train [FILE]`: truncated-BPTT training into a run directory, resumable."""

import contextlib
import math
import os
from pathlib import Path
from typing import Annotated

import typer

from charrnn.config import (
    AUTO_DROPOUT_RULE,
    AUTO_EMBED_RULE,
    AUTO_HIDDEN_RULE,
    AUTO_WEIGHT_DECAY_RULE,
    AUTO_WEIGHT_DROP_RULE,
    CELLS,
    DEFAULT_EPOCHS,
    DTYPES,
    LONG_RUN_EMA,
    LONG_RUN_EPOCHS,
    MAX_TIMED_EPOCHS,
    ModelConfig,
    TrainConfig,
    check_text_options,
    parse_duration,
)
from charrnn.errors import UsageError
from charrnn.paths import check_output_dir, runs_dir

from . import console
from .console import show_stats
from .hosts import failure_ends_every_host, is_leader, relay_output
from .options import (
    EncodingOption,
    ErrorsOption,
    ValFractionOption,
    budget_text,
    config_help,
    flag,
    given,
    nonempty_path,
    regularisation_text,
    require_nonempty,
    with_default,
)
from .progress import run_quietly, run_with_progress


# Typer reads the options from this signature: most of this function's lines declare them.
def train(
    corpus: Annotated[
        list[str] | None,
        typer.Argument(
            help="Text file (UTF-8), '-' for stdin, or 'pydoc' (built-in: Python's own documentation); a folder "
            "or several files are documents, joined with U+001E, the state reset between them. "
            "Defaults to pydoc, or to the corpus of the run given with --resume.",
            metavar="FILE",
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
        int | None, typer.Option("--hidden", help=with_default("Units per layer.", AUTO_HIDDEN_RULE))
    ] = None,
    embed: Annotated[int | None, typer.Option("--embed", help=with_default("Embedding size.", AUTO_EMBED_RULE))] = None,
    dropout: Annotated[
        float | None,
        typer.Option(
            help=with_default(
                "Dropout after each layer.",
                AUTO_DROPOUT_RULE,
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
    weight_drop: Annotated[
        float | None,
        typer.Option(
            help=with_default(
                "DropConnect on the recurrent weights, one mask per layer and window.", AUTO_WEIGHT_DROP_RULE
            )
        ),
    ] = None,
    bidirectional: Annotated[
        bool,
        typer.Option(
            "--bidirectional",
            help="A second stack reads right to left and each character is predicted from both sides: "
            "a model for `charrnn check`, which cannot sample or score.",
        ),
    ] = False,
    attention: Annotated[
        int | None,
        typer.Option(
            metavar="M",
            help=config_help(
                "One attention head over the top layer's last M outputs, carried from window to window (0: none).",
                ModelConfig,
                "attention",
            ),
        ),
    ] = None,
    attention_keys: Annotated[
        int | None,
        typer.Option(
            metavar="K",
            help=config_help(
                "--attention: the width of its queries and keys (at most --hidden; 0: the outputs themselves).",
                ModelConfig,
                "attention_keys",
            ),
        ),
    ] = None,
    lookahead: Annotated[
        int | None,
        typer.Option(
            help=config_help("--bidirectional: characters past each window read first.", ModelConfig, "lookahead"),
            hidden=True,
        ),
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(
            help=with_default(
                f"Matmul precision: {', '.join(DTYPES)}.",
                "bfloat16 on GPU/TPU and on CPUs where it trains faster (AMX, or AMD's AVX-512-BF16), else float32",
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
            help=with_default(
                "Decoupled weight decay (AdamW) of the weight matrices, times the learning rate.",
                AUTO_WEIGHT_DECAY_RULE,
            )
        ),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Stop after this many steps.", show_default=False)] = None,
    epochs: Annotated[
        float | None,
        typer.Option(help=with_default("Stop after this many epochs.", f"{DEFAULT_EPOCHS:g} if no budget is given")),
    ] = None,
    time: Annotated[
        str | None,
        typer.Option(
            "--time",
            help=f"Stop after this long, e.g. 300, 90s, 10m, 1h30m; at most {MAX_TIMED_EPOCHS:g} epochs unless "
            "--epochs is given.",
        ),
    ] = None,
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
        weight_drop=weight_drop,
        dtype=dtype,
        bidirectional=bidirectional or None,
        lookahead=lookahead,
        attention=attention,
        attention_keys=attention_keys,
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
    if attention_keys is not None and not attention and resume is None and init_from is None:
        raise UsageError("--attention-keys is the width of the attention head's keys: give --attention M too")
    asked_train = TrainConfig(**train_options, **budget_options)
    if resume is not None:
        check_output_dir(resume, "--resume")
    else:
        from charrnn.start import check_run_directory

        check_run_directory(out, "--out") if out is not None else check_output_dir(runs_dir(), "the runs directory")

    from .process import configure_jax

    configure_jax()
    from charrnn.placement import make_placement, start_distributed
    from charrnn.start import check_memory

    check_memory(asked_model, asked_train)  # before any slow work

    if coordinator is not None or num_processes is not None or process_id is not None:
        # `train` writes nothing to stdout, but the CPU collectives (gloo) print their connection
        # messages there from C++: stdout becomes stderr, so stdout stays clean for pipelines.
        os.dup2(2, 1)
        start_distributed(coordinator, num_processes, process_id)
        relay_output()
    placement = make_placement(devices)
    if "batch_size" in train_options:
        placement.check_batch_size(train_options["batch_size"])
    from charrnn.start import new_run, resume_run

    settings = {"model": model_options, "train": train_options | budget_options, "encoding": encoding, "errors": errors}
    if resume is not None:
        starting = resume_run(resume, corpus=corpus, min_count=min_count, warn=console.warn, **settings)
    else:
        starting = new_run(
            corpus or ["pydoc"],
            directory=out,
            parent=init_from,
            min_count=min_count or 1,
            warn=console.warn,
            **settings,
        )
    with failure_ends_every_host(), _resume_conflicts_as_options(), starting as start:
        if not is_leader():  # one voice for the whole run: process 0's
            finished = run_quietly(start.fit(placement))
            if finished.reason == "interrupted":
                raise typer.Exit(128 + (finished.signal or 2))
            return
        for note in start.notes:
            console.info(note)
        show_stats(start.corpus.stats, start.corpus.directory, start.cached)
        _describe(start, placement)
        finished = run_with_progress(start.fit(placement))
        run = start.run
        console.info(
            f"stopped ({finished.reason}) at step {finished.step}; best validation loss "
            f"{finished.best_val_loss:.4f} nats/char ({finished.best_val_loss / math.log(2):.4f} bits/char) "
            f"at step {finished.best_step}\n"
            f"run saved in {run.directory}; "
            + (
                f"check text with: charrnn check {run.directory} FILE"
                if start.model.bidirectional
                else f"sample with: charrnn sample {run.directory}"
            )
        )
        if finished.peaked_early:
            console.info(
                f"validation was best at step {finished.best_step} of {finished.step} and not again after it: the "
                f"model memorised the training text for the rest of the budget; more {flag('dropout')} or "
                f"{flag('weight_decay')}, or a shorter budget, would use it better (the best checkpoint is kept)"
            )
        if finished.reason == "interrupted":
            console.info(f"resume with: charrnn train --resume {run.directory}")
            raise typer.Exit(128 + (finished.signal or 2))  # 130 for Ctrl-C, 143 for SIGTERM


@contextlib.contextmanager
def _resume_conflicts_as_options():
    """A resumed run's settings given otherwise, in the options' names."""
    from charrnn.start import ResumeConflict

    try:
        yield
    except ResumeConflict as error:
        raise UsageError(error.worded_for([flag(name) for name in error.fields], "with --out")) from None


def _describe(start, placement) -> None:
    model_config, train_config = start.model, start.train
    model_extra, train_extra = regularisation_text(model_config.to_dict(), train_config.to_dict())
    console.info(
        f"{'resuming' if start.resuming else 'training'} {start.run.directory}: "
        + ("bidirectional " if model_config.bidirectional else "")
        + f"{model_config.layers}×{model_config.hidden_size} {model_config.cell.upper()}, "
        + (f"attention {model_config.attention}, " if model_config.attention else "")
        + f"embed {model_config.embed_size}, dropout "
        f"{model_config.dropout:g}{model_extra}, {model_config.dtype}; batch {train_config.batch_size} × "
        f"{train_config.seq_len} chars, lr {train_config.learning_rate:g}{train_extra}; budget "
        f"{budget_text(train_config.to_dict())}"
        + (f"; data-parallel over {placement.size} devices" if placement.size > 1 else "")
    )
