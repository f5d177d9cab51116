"""`charrnn check [RUN] [FILE]`: characters that do not fit, found by a bidirectional model, in the
shape linters print (file:line:col: message), so editors and `grep` read them."""

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from charrnn.errors import UsageError
from charrnn.paths import check_output_file, write_atomically

from . import console
from .options import nonempty_path, paragraphs
from .reading import RUN_OR_FILE_HELP, load_trained, open_input, read_text, run_and_file


def _text(out, label, text, judged, findings) -> None:
    from charrnn.surprisal import describe_finding

    for f in findings:
        out.write(
            f"{label}:{f.line}:{f.column}: {describe_finding(f)} (p {f.prob:.2g}; {f.best!r} {f.best_prob:.2g})\n"
        )


def _json(out, label, text, judged, findings) -> None:
    for f in findings:
        out.write(json.dumps({"file": label, **f.to_dict()}, ensure_ascii=False) + "\n")


def _show(out, label, text, judged, findings) -> None:
    from rich.console import Console

    from charrnn.surprisal import rich_check

    Console(file=out, highlight=False, soft_wrap=True).print(rich_check(text, judged, findings), end="")


WRITERS = {"text": _text, "json": _json, "show": _show}  # --format: a new output format is a function here


# Typer reads the options from this signature: most of this function's lines declare them.
def check(
    first: Annotated[str | None, typer.Argument(metavar="RUN", help=RUN_OR_FILE_HELP, show_default=False)] = None,
    second: Annotated[str | None, typer.Argument(metavar="FILE", help="See RUN.", show_default=False)] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            help="Report a place when an edit there makes the text this many nats more likely (for a "
            "replacement or a deletion, the mean of that and the character's surprisal), or its character's "
            "surprisal is over this many nats (lower finds more). [default: ln(vocabulary size) + 4: "
            "8.2 for 65 characters]",
            show_default=False,
        ),
    ] = None,
    repeated: Annotated[
        bool,
        typer.Option(
            "--repeated",
            help="Also report places whose text occurs again elsewhere unchanged (by default taken to be meant: "
            "a name, a term).",
        ),
    ] = False,
    output_format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help=f"Output: {', '.join(WRITERS)} (file:line:col: finding, a JSON object per finding, the text "
            "with flagged characters marked). [default: text]",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The same as --format json.")] = False,
    show: Annotated[bool, typer.Option("--show", help="The same as --format show.")] = False,
    html: Annotated[
        Path | None,
        typer.Option(
            parser=nonempty_path("--html"),
            help="Also write one HTML page: the text coloured by surprisal, flagged characters outlined.",
        ),
    ] = None,
    exit_code: Annotated[
        bool, typer.Option("--exit-code", help="Exit with 1 when anything is flagged (as `git diff --exit-code`).")
    ] = False,
    checkpoint: Annotated[str, typer.Option(help="Which checkpoint: best, latest or a step number.")] = "best",
) -> None:
    """Find characters that do not fit: typos, in any language, judged by a bidirectional model.

    Every character is judged given the text on both sides; one whose probability is far below the
    model's best guess is reported with the edit that fits best (a replacement, a deletion, an
    insertion or a swap of two characters), as FILE:LINE:COL: lines that editors jump to.

    Example: charrnn train notes.txt --bidirectional && charrnn check draft.txt
    """
    if threshold is not None:
        from charrnn.checking import check_threshold

        check_threshold(threshold)  # before a model loads
    flags = [name for name, on in (("json", as_json), ("show", show)) if on]
    if len(flags) > 1:
        raise UsageError("give --show or --json, not both")
    if output_format is not None and flags and output_format != flags[0]:
        raise UsageError(f"give --format or --{flags[0]}, not both")
    output_format = output_format or (flags[0] if flags else "text")
    if output_format not in WRITERS:
        raise UsageError(f"--format must be one of {', '.join(WRITERS)}, not {output_format!r}")
    if html is not None:
        check_output_file(html, "--html")
    run_dir, source = run_and_file(first, second)
    stream, label = open_input(source)
    model = load_trained(run_dir, checkpoint)
    checker = model.checker()  # refuses a left-to-right model before reading the text
    text = read_text(stream, label)
    label = "-" if label == "standard input" else label
    ticker = console.PlainTicker()
    ticker.due()  # the first progress line after ten seconds, not at once

    def progress(stage: str, done: int, total: int) -> None:  # long work shows progress, on stderr
        if ticker.due():
            console.info(f"check: {stage} {done / total:.0%}")

    judged = checker.cloze(text, progress)
    threshold = checker.threshold if threshold is None else threshold
    findings = checker.check(text, threshold, repeated=repeated, judged=judged, progress=progress)
    WRITERS[output_format](sys.stdout, label, text, judged, findings)
    sys.stdout.flush()
    if html is not None:
        from charrnn.surprisal import check_page

        title = f"{label} checked by {model.run.directory} (checkpoint {model.step})"
        page = check_page(text, judged, findings, model.vocab, title)
        write_atomically(html, lambda target: target.write_text(page, encoding="utf-8"))
    console.info(f"checked {len(text):,} characters: {len(findings):,} flagged (threshold {threshold:.3g} nats)")
    if exit_code and findings:
        raise typer.Exit(1)


check.__doc__ = paragraphs(check.__doc__)
