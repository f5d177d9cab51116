"""`charrnn score [RUN] [FILE]`: how likely the model finds each line; the data on stdout, the summary on stderr."""

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from charrnn.config import check_reading
from charrnn.errors import UsageError
from charrnn.paths import check_output_file, write_atomically

from . import console
from .options import nonempty_path, paragraphs
from .reading import RUN_OR_FILE_HELP, load_trained, open_input, read_lines, run_and_file


class _Tsv:
    """bits/char, log-probability (nats), characters, the line: what `sort -n` and `cut` read."""

    def __init__(self, out, vocab) -> None:
        self.out = out

    def write(self, line) -> None:
        self.out.write(f"{line.bits_per_char:.4f}\t{line.logprob:.4f}\t{line.chars}\t{line.text}\n")


class _Json(_Tsv):
    """One JSON object per line (`LineScore.to_dict`)."""

    def write(self, line) -> None:
        self.out.write(json.dumps(line.to_dict(), ensure_ascii=False) + "\n")


class _Show:
    """The text itself, each character coloured by its surprisal (rich; plain text into a pipe)."""

    def __init__(self, out, vocab) -> None:
        from rich.console import Console

        self.terminal, self.vocab = Console(file=out, highlight=False, soft_wrap=True), vocab

    def write(self, line) -> None:
        from charrnn.surprisal import rich_line

        self.terminal.print(rich_line(line, self.vocab))


WRITERS = {"tsv": _Tsv, "json": _Json, "show": _Show}  # --format: a new output format is a class here


# Typer reads the options from this signature: most of this function's lines declare them.
def score(
    first: Annotated[str | None, typer.Argument(metavar="RUN", help=RUN_OR_FILE_HELP, show_default=False)] = None,
    second: Annotated[str | None, typer.Argument(metavar="FILE", help="See RUN.", show_default=False)] = None,
    context: Annotated[
        bool, typer.Option("--context", help="Carry the state from line to line (the text read as one document).")
    ] = False,
    output_format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help=f"Output: {', '.join(WRITERS)} (a line each: tab-separated figures, a JSON object, the text "
            "coloured by surprisal). [default: tsv]",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The same as --format json.")] = False,
    unknown: Annotated[
        str, typer.Option(help="Characters the model never saw: error, or skip (left out of the score, counted).")
    ] = "error",
    checkpoint: Annotated[str, typer.Option(help="Which checkpoint: best, latest or a step number.")] = "best",
    show: Annotated[bool, typer.Option("--show", help="The same as --format show.")] = False,
    html: Annotated[
        Path | None,
        typer.Option(
            parser=nonempty_path("--html"),
            help="Also write one HTML page: characters coloured by surprisal; hover for alternatives.",
        ),
    ] = None,
) -> None:
    """Score each line of FILE: bits/char, log-probability (nats), characters, the line, tab-separated.

    Each line is read from a fresh state: its first character is predicted after a newline (as
    sampling starts) and its score includes predicting its newline (a last line without one is
    scored as if it had one); the character count includes that newline. --context reads the lines
    as one text instead, the state carried. Output is in input order and streamed; the summary
    (lines, characters, bits/char, perplexity, unknown characters) goes to stderr.

    Example: charrnn score < lines.txt | sort -n | head
    """
    check_reading(unknown)  # before any slow work
    if show and as_json:
        raise UsageError("give --show or --json, not both")
    shorthand = "json" if as_json else "show" if show else None
    if output_format is not None and shorthand is not None and output_format != shorthand:
        raise UsageError(f"give --format or --{shorthand}, not both")
    output_format = output_format or shorthand or "tsv"
    if output_format not in WRITERS:
        raise UsageError(f"--format must be one of {', '.join(WRITERS)}, not {output_format!r}")
    if html is not None:
        check_output_file(html, "--html")
    run_dir, source = run_and_file(first, second)
    stream, label = open_input(source)
    model = load_trained(run_dir, checkpoint)

    from charrnn.scoring import Summary

    details = output_format == "show" or html is not None
    scores = model.score_iter(read_lines(stream, label), context=context, unknown=unknown, details=details)
    summary, kept = Summary(), []
    out = sys.stdout
    writer = WRITERS[output_format](out, model.vocab)
    ticker = console.PlainTicker()
    ticker.due()  # the first progress line after ten seconds, not at once
    for line in scores:
        summary.add(line)
        if ticker.due() and not out.isatty():  # long work shows progress, on stderr
            console.info(f"scored {summary.lines:,} lines so far")
        if html is not None:
            kept.append(line)
        writer.write(line)
        out.flush()
    if html is not None:
        from charrnn.surprisal import html_page

        title = f"{label} scored by {model.run.directory} (checkpoint {model.step})"
        page = html_page(kept, model.vocab, title, summary)
        write_atomically(html, lambda target: target.write_text(page, encoding="utf-8"))
    console.info(describe(summary, unknown))


score.__doc__ = paragraphs(score.__doc__)


def describe(summary, unknown: str) -> str:
    """The stderr summary: totals per character, like KenLM's and SRILM's, with the OOV count."""
    if not summary.lines:
        return "scored 0 lines"
    figures = f"{summary.bits_per_char:.4f} bits/char, perplexity {summary.perplexity:.4f}" if summary.chars else "-"
    oov = f"{summary.oov:,} unknown characters left out" if unknown == "skip" else "OOV 0"
    return f"scored {summary.lines:,} lines, {summary.chars:,} characters (newlines included): {figures}; {oov}"
