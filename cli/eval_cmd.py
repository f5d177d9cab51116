"""`charrnn eval [RUN] [FILE]`: the loss over a whole text, or over the run's validation split."""

import json
import sys
from typing import Annotated

import typer

from charrnn.config import VAL_BURN_IN, check_reading
from charrnn.errors import UsageError

from . import console
from .options import paragraphs
from .reading import load_trained, open_input, read_text, run_and_file


def _text(record: dict) -> str:
    return (
        f"{record['nats_per_char']:.4f} nats/char  {record['bits_per_char']:.4f} bits/char  perplexity "
        f"{record['perplexity']:.4f}  ({record['chars']:,} characters of {record['text']}, checkpoint "
        f"{record['checkpoint']})\n"
    )


def _json(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


WRITERS = {"text": _text, "json": _json}  # --format: a new output format is a function here


# Typer reads the options from this signature: most of this function's lines declare them.
def eval_(
    first: Annotated[
        str | None,
        typer.Argument(
            metavar="RUN",
            help="The run directory and the file to read, as for score; with no FILE, the run's "
            "validation split (`-`: standard input).",
            show_default=False,
        ),
    ] = None,
    second: Annotated[str | None, typer.Argument(metavar="FILE", help="See RUN.", show_default=False)] = None,
    checkpoint: Annotated[str, typer.Option(help="Which checkpoint: best, latest or a step number.")] = "best",
    streams: Annotated[
        int,
        typer.Option(
            help=f"FILE only: read it as this many parts side by side (faster), each after the {VAL_BURN_IN} "
            "characters before it, which give it context and are not counted.",
        ),
    ] = 1,
    unknown: Annotated[str, typer.Option(help="Characters the model never saw: error, or skip (left out).")] = "error",
    output_format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help=f"Output: {', '.join(WRITERS)} (one line of figures, or one JSON object). [default: text]",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The same as --format json.")] = False,
) -> None:
    """Loss over a whole text read with carried state: nats/char, bits/char and perplexity.

    With no FILE, over the run's validation split exactly as training measured it (the same
    streams, windows, burn-in and character cap), so the figure equals the validation loss metrics.jsonl
    records for that checkpoint. A FILE (or `-`) is read from its start, its first character
    predicted after a newline.
    """
    check_reading(unknown, streams)  # before any slow work
    if as_json and output_format not in (None, "json"):
        raise UsageError("give --format or --json, not both")
    output_format = output_format or ("json" if as_json else "text")
    if output_format not in WRITERS:
        raise UsageError(f"--format must be one of {', '.join(WRITERS)}, not {output_format!r}")
    run_dir, source = run_and_file(first, second)
    text_source = None
    if source is not None:
        stream, label = open_input(source)
        text_source = (stream, label)
    model = load_trained(run_dir, checkpoint)
    if text_source is None:
        label = f"validation split of {model.run.directory}"
        result = model.eval()
        recorded = model.recorded_val_loss()
    else:
        stream, label = text_source
        result = model.eval(read_text(stream, label), streams=streams, unknown=unknown)
        recorded = None
    record = {"text": label, "run": str(model.run.directory), "checkpoint": model.step, **result.to_dict()}
    if recorded is not None:
        record["recorded_val_loss"] = recorded
    sys.stdout.write(WRITERS[output_format](record))
    if output_format == "text":  # what JSON holds as fields, said beside the figures
        if recorded is not None:
            console.info(f"training recorded {recorded:.4f} nats/char for checkpoint {model.step}")
        if result.oov:
            console.info(f"{result.oov:,} unknown characters left out")


eval_.__doc__ = paragraphs(eval_.__doc__)
