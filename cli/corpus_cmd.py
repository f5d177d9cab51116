"""``charrnn corpus``: list the catalog of classic corpora and download them into the cache.

``get`` prints only the cached path on stdout (progress goes to stderr) so that it composes:
``charrnn train $(charrnn corpus get tinyshakespeare)``.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from .options import require_nonempty

if TYPE_CHECKING:  # imported where used: `charrnn --help` loads neither rich's widgets nor the catalog
    from rich.console import Console

    from charrnn.catalog import CorpusEntry

corpus_app = typer.Typer(help="List and download the classic corpora.", no_args_is_help=True, rich_markup_mode=None)


def _human_size(size: int) -> str:
    """Decimal units, like download tools print them."""
    if size < 1000:
        return f"{size} B"
    value = size / 1000
    for unit in ("kB", "MB"):
        if value < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def _one_line(text: str) -> str:
    """Keep tab-separated output parseable whatever the catalog says."""
    return " ".join(text.split())


@corpus_app.command("list")
def list_corpora(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the catalog as JSON, with each corpus's cache state.")
    ] = False,
) -> None:
    """List the corpora charrnn can download (a table on a terminal, tab-separated lines when piped)."""
    from charrnn.catalog import cached_path, is_cached, load_catalog

    entries = load_catalog()
    if as_json:
        records = [entry.to_json() | {"cached": is_cached(entry), "path": str(cached_path(entry))} for entry in entries]
        sys.stdout.write(json.dumps(records, indent=2, ensure_ascii=False) + "\n")
        return
    if not sys.stdout.isatty():
        for entry in entries:
            fields = (entry.name, str(entry.size), entry.licence, entry.title)
            sys.stdout.write("\t".join(_one_line(field) for field in fields) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Corpora (fetch with `charrnn corpus get NAME`)", title_justify="left")
    table.add_column("name", style="bold cyan", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("title", min_width=10, ratio=2)
    table.add_column("licence", ratio=1)
    table.add_column("cached", justify="center", no_wrap=True)
    for entry in entries:
        table.add_row(
            entry.name,
            _human_size(entry.size),
            entry.title,
            entry.licence,
            "[green]yes[/]" if is_cached(entry) else "[dim]no[/]",
        )
    Console().print(table)


class _LazyProgress:
    """A download bar on stderr that only appears once bytes actually start flowing.

    A cached corpus then prints nothing at all, and a non-terminal stderr gets no bar.
    """

    def __init__(self, console: Console, entry: CorpusEntry) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._entry = entry
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
            disable=not console.is_terminal,
        )
        self._task: int | None = None

    def __call__(self, received: int, total: int) -> None:
        if self._task is None:
            self._progress.start()
            self._task = self._progress.add_task(f"Downloading {self._entry.name}", total=total)
        self._progress.update(self._task, completed=received, total=total)

    @property
    def started(self) -> bool:
        return self._task is not None

    def stop(self) -> None:
        if self._task is not None:
            self._progress.stop()


@corpus_app.command("get")
def get(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Corpus name, as shown by `charrnn corpus list`.")],
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="Download from this URL (a mirror or local copy) instead of the catalog's; "
            "the file must still match the catalog's size and SHA-256.",
        ),
    ] = None,
) -> None:
    """Download a corpus into the cache (if not already there and intact) and print its path."""
    require_nonempty("--url", url)
    from rich.console import Console

    from charrnn.catalog import fetch, find_entry

    entry = find_entry(name)
    console = Console(stderr=True)
    bar = _LazyProgress(console, entry)
    try:
        path = fetch(entry, url=url, progress=bar)
    finally:
        bar.stop()
    if bar.started:
        console.print(
            f"[green]downloaded[/] {entry.name} ({_human_size(entry.size)}), size and sha256 verified",
            highlight=False,
        )
    sys.stdout.write(f"{path}\n")
