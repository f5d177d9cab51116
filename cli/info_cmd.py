"""`charrnn info [RUN]` and `charrnn runs [DIR]`: what a run is and how it went, on stdout.

A rich table when stdout is a terminal, plain aligned text otherwise (for grep and less), and
``--json`` for scripts. Nothing here imports JAX: the facts come from the run's files.
"""

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from . import console
from .options import RunArgument, budget_text, nonempty_path, regularisation_text, with_default

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")]
UNKNOWN = "unknown"


def info(
    run_dir: RunArgument = None,
    as_json: JsonOption = False,
) -> None:
    """Show a run's model, training, losses, device and checkpoints."""
    from charrnn.report import describe
    from charrnn.runs import Run, latest_run

    run = Run(run_dir) if run_dir is not None else latest_run()
    facts = describe(run)
    if as_json:
        _print(json.dumps(facts, indent=2, ensure_ascii=False))
        return
    _show_pairs(f"run {facts['run']}", _info_rows(facts))


def runs(
    directory: Annotated[
        Path | None,
        typer.Argument(
            parser=nonempty_path("DIRECTORY"),
            metavar="DIRECTORY",
            help=with_default("Directory of runs.", "./runs"),
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List every run under a directory, most recently modified first."""
    from charrnn.report import list_runs

    rows, warnings = list_runs(directory)
    for warning in warnings:
        console.info(f"charrnn: warning: {warning}")
    if as_json:
        _print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not rows:
        console.info(f"no runs under {directory or 'runs'}")
        return
    header = ["name", "cell", "size", "params", "steps", "best val", "modified"]
    table = [
        [
            row["name"],
            row["cell"],
            row["size"],
            f"{row['parameters']:,}",
            str(row["steps"]),
            _nats(row["best_val_loss"]),
            row["last_modified"].replace("T", " ").removesuffix("+00:00"),
        ]
        for row in rows
    ]
    _show_table(header, table)


def _nats(value: float | None) -> str:
    return UNKNOWN if value is None else f"{value:.4f}"


def _loss(nats: float | None, bits: float | None, step: int | None = None) -> str:
    if nats is None:
        return UNKNOWN
    return f"{nats:.4f} nats/char ({bits:.4f} bits/char)" + (f" at step {step}" if step is not None else "")


def _info_rows(facts: dict[str, Any]) -> list[tuple[str, str]]:
    model, train, corpus = facts["model"], facts["train"], facts["corpus"]
    console_duration = console.format_duration
    model_extra, train_extra = regularisation_text(model, train)
    device = facts["device"] or UNKNOWN
    if facts["platform"] and facts["platform"] != facts["device"]:
        device = f"{device} ({facts['platform']})"
    checkpoints = ", ".join(
        f"{c['step']} ({_nats(c['val_loss'])}{', best' if c['best'] else ''})" for c in facts["checkpoints"]
    )
    elapsed = facts["training_seconds"]
    return [
        (
            "model",
            (
                "bidirectional (cloze, look-ahead {}{}) ".format(
                    model.get("lookahead"), ", one-way layers" if model.get("direction_heads") else ""
                )
                if model.get("bidirectional")
                else ""
            )
            + f"{model['layers']}×{model['hidden_size']} {model['cell'].upper()}, "
            + (f"attention {model['attention']}, " if model.get("attention") else "")
            + f"embed {model['embed_size']}, "
            f"dropout {model['dropout']:g}{model_extra}",
        ),
        ("parameters", f"{facts['parameters']:,}"),
        ("vocabulary", f"{facts['vocab_size']} characters: {facts['vocab_preview']}"),
        ("corpus", _corpus(corpus)),
        (
            "training",
            f"batch {train['batch_size']} × {train['seq_len']} chars, lr {train['learning_rate']:g}{train_extra}, "
            f"seed {train['seed']}; budget {budget_text(train) or 'none'}",
        ),
        ("steps", str(facts["steps"])),
        ("epochs", UNKNOWN if facts["epochs"] is None else f"{facts['epochs']:.2f}"),
        ("characters seen", UNKNOWN if facts["chars_seen"] is None else f"{facts['chars_seen']:,}"),
        ("best validation", _loss(facts["best_val_loss"], facts["best_val_bits_per_char"], facts["best_step"])),
        ("last validation", _loss(facts["last_val_loss"], facts["last_val_bits_per_char"])),
        ("device", device),
        ("precision", facts["precision"] or UNKNOWN),
        ("training time", UNKNOWN if elapsed is None else console_duration(elapsed)),
        ("parent", facts["parent"] or "none"),
        ("checkpoints", checkpoints or "none"),
        ("modified", facts["last_modified"].replace("T", " ").removesuffix("+00:00") + " UTC"),
    ]


def _corpus(corpus: dict[str, Any]) -> str:
    source = corpus.get("source", UNKNOWN)
    if isinstance(source, list):
        source = " ".join(source)
    documents = f" in {corpus['documents']:,} documents" if corpus.get("documents") else ""
    return f"{source} ({corpus.get('characters', 0):,} characters{documents})"


def _print(text: str) -> None:
    """Write to stdout; a closed pipe (`| head`) ends quietly."""
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        console.silence_stdout()
        raise typer.Exit(0) from None


def _show_pairs(title: str, rows: list[tuple[str, str]]) -> None:
    if sys.stdout.isatty():
        from rich.table import Table

        table = Table(title=title, show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column()
        for key, value in rows:
            table.add_row(key, value)
        _rich(table)
        return
    width = max(len(key) for key, _ in rows)
    _print("\n".join([title, *(f"{key.ljust(width)}  {value}" for key, value in rows)]))


def _show_table(header: list[str], rows: list[list[str]]) -> None:
    if sys.stdout.isatty():
        from rich.table import Table

        table = Table(*header)
        for row in rows:
            table.add_row(*row)
        _rich(table)
        return
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    _print("\n".join(lines))


def _rich(renderable: Any) -> None:
    from rich.console import Console

    Console(highlight=False).print(renderable)
