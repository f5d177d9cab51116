"""The `charrnn` command. Importing this module must stay cheap: no JAX until a command runs."""

import os
import sys
from typing import Annotated

import typer

from charrnn import __version__
from charrnn.errors import CharrnnError

from . import console
from .bench_cmd import bench
from .corpus_cmd import corpus_app
from .info_cmd import info, runs
from .plot_cmd import plot
from .prep_cmd import prep
from .sample_cmd import sample
from .train_cmd import train

app = typer.Typer(
    name="charrnn",
    help="Character-level recurrent language models (LSTM, GRU, RNN) on JAX.\n\n"
    "Train with `charrnn train FILE`, then generate with `charrnn sample --temp 0.8 | head`. "
    "Inspect runs with `charrnn runs`, `charrnn info RUN` and `charrnn plot RUN...`.",
    no_args_is_help=True,
    add_completion=True,  # Typer's --install-completion / --show-completion
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command()(prep)
app.command()(train)
app.command()(sample)
app.command()(bench)
app.command()(info)
app.command()(runs)
app.command()(plot)
app.add_typer(corpus_app, name="corpus")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"charrnn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Character-level recurrent language models (LSTM, GRU, RNN) on JAX."""


def main() -> None:
    """Entry point: a user's mistake becomes one line on stderr and a non-zero exit, never a traceback."""
    try:
        app(prog_name="charrnn")  # also names the completion script, however charrnn was started
    except CharrnnError as error:
        console.info(f"charrnn: error: {error}")
        sys.exit(error.exit_code)


def silence_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the exit-time flush cannot raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    main()
