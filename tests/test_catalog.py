"""The corpus catalog and downloader, against a local HTTP server (never the internet)."""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from charrnn import catalog
from charrnn.catalog import CorpusEntry, cached_path, fetch, find_entry, load_catalog
from charrnn.cli.corpus_cmd import corpus_app
from charrnn.errors import CharrnnError

TEXT = "To be, or not to be: that is the question.\n床前明月光，疑是地上霜。\n".encode()


def tiny_entry(data: bytes = TEXT, *, sha256: str | None = None, size: int | None = None) -> CorpusEntry:
    """A catalog entry for a small text; its own URL must never be used by the tests."""
    return CorpusEntry(
        name="tiny",
        title="Tiny test corpus",
        url="https://charrnn.invalid/tiny.txt",
        size=len(data) if size is None else size,
        sha256=hashlib.sha256(data).hexdigest() if sha256 is None else sha256,
        licence="public domain",
    )


@dataclass
class Server:
    base: str
    root: Path
    requests: list[str] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("CHARRNN_CACHE", str(root))
    monkeypatch.delenv("CHARRNN_CORPUS_MIRROR", raising=False)
    return root


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "srv"
    root.mkdir()
    (root / "tiny.txt").write_bytes(TEXT)
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Server(base=f"http://127.0.0.1:{httpd.server_address[1]}", root=root, requests=requests)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def leftovers(cache: Path) -> list[str]:
    directory = cache / "corpora"
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# --- the catalog itself ------------------------------------------------------------------


def test_catalog_entries_are_complete_and_verifiable() -> None:
    entries = load_catalog()
    names = [entry.name for entry in entries]
    assert "tinyshakespeare" in names
    assert len(set(names)) == len(names)
    for entry in entries:
        assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", entry.name), entry.name
        assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256), entry.name
        assert entry.size > 0, entry.name
        assert entry.url.startswith("https://"), entry.name
        assert entry.licence.strip(), entry.name
        assert entry.title.strip(), entry.name
        assert "\t" not in entry.licence + entry.title


def test_catalog_has_a_chinese_corpus() -> None:
    assert any(entry.language.startswith("zh") for entry in load_catalog())


def test_tinyshakespeare_entry_matches_the_known_file() -> None:
    entry = find_entry("tinyshakespeare")
    assert entry.size == 1115394
    assert entry.sha256 == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    assert entry.url == "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(CharrnnError, match="tinyshakespeare"):
        find_entry("tinyshakespear")


def test_cached_path_lives_under_the_cache(cache: Path) -> None:
    assert cached_path(tiny_entry()) == cache / "corpora" / "tiny.txt"


# --- fetch ------------------------------------------------------------------------------


def test_fetch_downloads_verifies_and_caches(cache: Path, server: Server) -> None:
    entry = tiny_entry()
    seen: list[tuple[int, int]] = []
    path = fetch(entry, url=server.url("tiny.txt"), progress=lambda done, total: seen.append((done, total)))
    assert path == cache / "corpora" / "tiny.txt"
    assert path.read_bytes() == TEXT
    assert server.requests == ["/tiny.txt"]
    assert seen and seen[-1] == (len(TEXT), len(TEXT))
    assert leftovers(cache) == ["tiny.txt"]

    again = fetch(entry, url=server.url("tiny.txt"), progress=lambda done, total: seen.append((done, total)))
    assert again == path
    assert server.requests == ["/tiny.txt"], "a verified cached file must not be downloaded again"


def test_wrong_checksum_raises_and_leaves_nothing(cache: Path, server: Server) -> None:
    entry = tiny_entry(sha256="0" * 64)
    with pytest.raises(CharrnnError, match="checksum mismatch") as info:
        fetch(entry, url=server.url("tiny.txt"))
    message = str(info.value)
    assert "0" * 64 in message and hashlib.sha256(TEXT).hexdigest() in message
    assert "\n" not in message
    assert leftovers(cache) == []


def test_wrong_size_raises_and_leaves_nothing(cache: Path, server: Server) -> None:
    for size in (len(TEXT) - 1, len(TEXT) + 1):
        with pytest.raises(CharrnnError, match="size mismatch"):
            fetch(tiny_entry(size=size), url=server.url("tiny.txt"))
        assert leftovers(cache) == []


def test_corrupted_cache_is_replaced(cache: Path, server: Server) -> None:
    entry = tiny_entry()
    path = cached_path(entry)
    path.parent.mkdir(parents=True)
    path.write_bytes(TEXT[:-2] + b"!\n")  # same size, wrong bytes
    assert fetch(entry, url=server.url("tiny.txt")) == path
    assert path.read_bytes() == TEXT
    assert server.requests == ["/tiny.txt"]
    assert leftovers(cache) == ["tiny.txt"]


def test_truncated_cache_is_replaced(cache: Path, server: Server) -> None:
    entry = tiny_entry()
    path = cached_path(entry)
    path.parent.mkdir(parents=True)
    path.write_bytes(TEXT[:5])
    fetch(entry, url=server.url("tiny.txt"))
    assert path.read_bytes() == TEXT


def test_failed_redownload_keeps_nothing_new(cache: Path, server: Server) -> None:
    entry = tiny_entry()
    (server.root / "tiny.txt").write_bytes(b"something else entirely\n")
    with pytest.raises(CharrnnError):
        fetch(entry, url=server.url("tiny.txt"))
    assert leftovers(cache) == []


def test_http_error_is_a_charrnn_error(cache: Path, server: Server) -> None:
    with pytest.raises(CharrnnError, match="HTTP 404"):
        fetch(tiny_entry(), url=server.url("missing.txt"))
    assert leftovers(cache) == []


def test_unreachable_host_is_a_charrnn_error(cache: Path, server: Server) -> None:
    closed = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    port = closed.server_address[1]
    closed.server_close()
    with pytest.raises(CharrnnError, match="cannot download|failed"):
        fetch(tiny_entry(), url=f"http://127.0.0.1:{port}/tiny.txt", timeout=5)
    assert leftovers(cache) == []


def test_local_path_as_url(cache: Path, tmp_path: Path) -> None:
    copy = tmp_path / "by-hand.txt"
    copy.write_bytes(TEXT)
    assert fetch(tiny_entry(), url=str(copy)).read_bytes() == TEXT


def test_mirror_environment_variable(cache: Path, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHARRNN_CORPUS_MIRROR", server.base + "/")
    path = fetch(tiny_entry())  # the entry's own URL is on .invalid: only the mirror can work
    assert path.read_bytes() == TEXT
    assert server.requests == ["/tiny.txt"]


def test_explicit_url_beats_mirror(cache: Path, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHARRNN_CORPUS_MIRROR", "http://127.0.0.1:9/nowhere")
    (server.root / "copy.txt").write_bytes(TEXT)
    fetch(tiny_entry(), url=server.url("copy.txt"))
    assert server.requests == ["/copy.txt"]


# --- the CLI ----------------------------------------------------------------------------


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    entries = [tiny_entry(), *load_catalog()]
    monkeypatch.setattr(catalog, "load_catalog", lambda: list(entries))
    application = typer.Typer()
    application.add_typer(corpus_app, name="corpus")
    return application


def test_cli_get_prints_only_the_path(app: typer.Typer, cache: Path, server: Server) -> None:
    result = CliRunner().invoke(app, ["corpus", "get", "tiny", "--url", server.url("tiny.txt")])
    assert result.exit_code == 0, result.output
    expected = cache / "corpora" / "tiny.txt"
    assert result.stdout == f"{expected}\n"
    assert expected.read_bytes() == TEXT

    cached = CliRunner().invoke(app, ["corpus", "get", "tiny", "--url", server.url("tiny.txt")])
    assert cached.exit_code == 0, cached.output
    assert cached.stdout == f"{expected}\n"
    assert server.requests == ["/tiny.txt"]


def test_cli_get_unknown_name_fails(app: typer.Typer, cache: Path) -> None:
    result = CliRunner().invoke(app, ["corpus", "get", "no-such-corpus"])
    assert result.exit_code != 0
    assert isinstance(result.exception, CharrnnError)
    assert result.stdout == ""


def test_cli_get_bad_checksum_fails(app: typer.Typer, cache: Path, server: Server) -> None:
    (server.root / "tiny.txt").write_bytes(TEXT.upper())
    result = CliRunner().invoke(app, ["corpus", "get", "tiny", "--url", server.url("tiny.txt")])
    assert isinstance(result.exception, CharrnnError)
    assert result.stdout == ""
    assert leftovers(cache) == []


def test_cli_list_plain_when_piped(app: typer.Typer, cache: Path) -> None:
    result = CliRunner().invoke(app, ["corpus", "list"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    rows = [line.split("\t") for line in lines]
    assert all(len(row) == 4 for row in rows), lines
    by_name = {row[0]: row for row in rows}
    assert by_name["tinyshakespeare"][1] == "1115394"
    assert by_name["tiny"] == ["tiny", str(len(TEXT)), "public domain", "Tiny test corpus"]


def test_cli_list_json(app: typer.Typer, cache: Path, server: Server) -> None:
    fetch(tiny_entry(), url=server.url("tiny.txt"))
    result = CliRunner().invoke(app, ["corpus", "list", "--json"])
    assert result.exit_code == 0, result.output
    records = {record["name"]: record for record in json.loads(result.stdout)}
    assert records["tiny"]["cached"] is True
    assert records["tiny"]["bytes"] == len(TEXT)
    assert records["tinyshakespeare"]["cached"] is False
    assert records["tinyshakespeare"]["sha256"] == find_entry("tinyshakespeare").sha256
