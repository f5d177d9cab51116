"""The `charrnn` command. Importing this module must stay cheap: no JAX until a command runs."""

import io
import os
import sys
from typing import Annotated

import typer

try:  # newer typer carries its own copy of click
    from typer._click.exceptions import ClickException
except ImportError:
    from click.exceptions import ClickException

from charrnn import __version__
from charrnn.errors import CharrnnError

from . import console
from .bench_cmd import bench
from .check_cmd import check
from .console import silence_stdout
from .corpus_cmd import corpus_app
from .eval_cmd import eval_
from .info_cmd import info, runs
from .options import flag
from .plot_cmd import plot
from .prep_cmd import prep
from .sample_cmd import sample
from .score_cmd import score
from .serve_cmd import serve
from .train_cmd import train

app = typer.Typer(
    name="charrnn",
    help="Character-level recurrent language models (LSTM, GRU, RNN) on JAX.\n\n"
    "Train with `charrnn train FILE`, then generate with `charrnn sample --temp 0.8 | head`. "
    "Inspect runs with `charrnn runs`, `charrnn info RUN` and `charrnn plot RUN...`.",
    no_args_is_help=True,
    rich_markup_mode=None,  # plain help, as Unix tools print it (rich's panels are slow to load and draw)
    add_completion=True,  # Typer's --install-completion / --show-completion
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command()(prep)
app.command()(train)
app.command()(sample)
app.command()(bench)
app.command()(score)
app.command()(serve)
app.command("eval")(eval_)
app.command()(check)
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


class StdoutError(CharrnnError):
    """Standard output cannot be written (a full disk, say)."""


class _GuardedStdout:
    """sys.stdout, with a failure to write it turned into one StdoutError; a closed pipe stays a
    BrokenPipeError, which `main` ends quietly."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def __getattr__(self, name: str):
        return getattr(self._stream, name)

    def write(self, text: str) -> int:
        return self._guard(self._stream.write, text)

    def flush(self) -> None:
        self._guard(self._stream.flush)

    @staticmethod
    def _guard(method, *args):
        try:
            return method(*args)
        except BrokenPipeError:
            raise
        except OSError as error:
            raise StdoutError(f"cannot write to standard output: {error.strerror or error}") from None


class _ClosedStdout(io.TextIOBase):
    """Standard output of a process started with it closed (``charrnn sample >&-``), where Python
    leaves sys.stdout None: commands that print nothing there still work; writing is one line."""

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        raise StdoutError("cannot write to standard output: it is closed")


def _flush_and_leave(code: int) -> None:
    """End the process now, without joining threads (everything of ours is written already)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _run() -> int:
    """Run the app with click's errors in our form: a wrong option or a missing argument is one line,
    as every other mistake (click's own display is the usage, a hint and a boxed message)."""
    try:
        result = app(prog_name="charrnn", standalone_mode=False)  # prog_name also names the completion script
    except ClickException as error:
        if type(error).__name__ == "NoArgsIsHelpError":  # `charrnn` alone: the help, as click shows it
            error.show()
            return error.exit_code
        console.info(f"charrnn: error: {error.format_message().rstrip('.')}")
        return error.exit_code
    except typer.Abort:  # Ctrl-C outside the commands' own handling
        console.info("charrnn: aborted")
        return 130
    return result if isinstance(result, int) else 0  # an exit code from --help, --version or typer.Exit


def main() -> None:
    """Entry point: a user's mistake becomes one line on stderr and a non-zero exit, never a traceback.

    Output, for every command: when the reader of stdout goes away (``| head``) the command ends
    quietly with exit 0, since the reader has what it wanted; any other failure to write stdout
    (``> /dev/full``) is one line and exit 1.
    """
    sys.stdout = _GuardedStdout(sys.stdout if sys.stdout is not None else _ClosedStdout())
    try:
        try:
            sys.exit(_run())
        except SystemExit as done:
            if isinstance(done.__context__, BrokenPipeError):  # typer turns a broken pipe into exit 1
                raise done.__context__ from None
            sys.stdout.flush()  # deliver the last output now, where a failure can still be reported
            raise
    except CharrnnError as error:
        if isinstance(error, StdoutError):
            silence_stdout()  # so that the flush at exit cannot fail again
        console.info(f"charrnn: error: {error.worded(flag)}")
        if error.leaves_threads_behind:  # Python would wait for them at exit, for ever
            _flush_and_leave(error.exit_code)
        sys.exit(error.exit_code)
    except BrokenPipeError:
        silence_stdout()
        sys.exit(0)


if __name__ == "__main__":
    main()
