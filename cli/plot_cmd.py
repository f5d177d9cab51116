"""`charrnn plot [RUN ...]`: training and validation loss curves of runs, as a PNG or in the terminal."""

import sys
from pathlib import Path
from typing import Annotated

import typer

from charrnn.errors import UsageError
from charrnn.paths import check_output_file

from .options import nonempty_path, with_default


def plot(
    run_dirs: Annotated[
        list[Path] | None,
        typer.Argument(
            parser=nonempty_path("RUN"),
            metavar="RUN",
            help=with_default("Run directories.", "the run trained most recently under ./runs"),
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            parser=nonempty_path("--output"),
            help=with_default("PNG file to write.", "loss.png in the first run's directory"),
        ),
    ] = None,
    x: Annotated[str, typer.Option("--x", help="x axis: steps or chars (characters seen).")] = "steps",
    terminal: Annotated[bool, typer.Option("--terminal", help="Draw in the terminal (plotext) instead.")] = False,
) -> None:
    """Plot training and validation loss (nats/char) of one or more runs; prints the PNG's path."""
    if x not in ("steps", "chars"):
        raise UsageError(f"--x must be steps or chars, not {x!r}")
    if terminal and output is not None:
        raise UsageError("give --terminal or --output, not both")
    if output is not None:
        check_output_file(output, "--output")
    from charrnn.plotting import save_png, terminal_plot
    from charrnn.runs import Run, latest_run

    runs = [Run(d) for d in run_dirs] if run_dirs else [latest_run()]
    if terminal:
        import shutil

        size = shutil.get_terminal_size((100, 30))
        chart = terminal_plot(
            runs, x, width=min(size.columns, 120), height=max(12, min(size.lines - 2, 30)), colour=sys.stdout.isatty()
        )
        sys.stdout.write(chart + "\n")
        return
    path = output if output is not None else runs[0].directory / "loss.png"
    save_png(runs, path, x)
    sys.stdout.write(f"{path}\n")
