"""The catalog of classic corpora and a verifying downloader for them.

The catalog (``charrnn/corpora/catalog.json``) holds metadata only: corpus text is never
shipped with charrnn but fetched on demand into the user's cache, and every download is
checked against the catalog's exact size and SHA-256 so that a training run can be
reproduced from the corpus name alone. Deliberately free of JAX: ``charrnn corpus`` must
stay fast.
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import json
import os
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, Any

from charrnn import __version__
from charrnn.errors import CharrnnError
from charrnn.paths import cache_dir

MIRROR_ENV = "CHARRNN_CORPUS_MIRROR"
"""Environment variable naming a base URL that serves ``<name>.txt`` for every corpus."""

_CHUNK = 1 << 16
_REQUIRED = ("name", "title", "url", "bytes", "sha256", "licence")

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(bytes_received, bytes_expected)`` while downloading."""


@dataclass(frozen=True)
class CorpusEntry:
    """One catalog entry. ``size`` is the catalog's ``bytes`` field (the exact file size)."""

    name: str
    title: str
    url: str
    size: int
    sha256: str
    licence: str
    description: str = ""
    language: str = ""
    characters: int | None = None
    homepage: str = ""
    notes: str = ""

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> CorpusEntry:
        """Build an entry from one catalog record, rejecting records that could not be verified."""
        missing = [key for key in _REQUIRED if key not in raw]
        if missing:
            raise CharrnnError(
                f"corpus catalog entry {raw.get('name', '?')!r} lacks {', '.join(missing)}; reinstall charrnn"
            )
        return cls(
            name=str(raw["name"]),
            title=str(raw["title"]),
            url=str(raw["url"]),
            size=int(raw["bytes"]),
            sha256=str(raw["sha256"]).lower(),
            licence=str(raw["licence"]),
            description=str(raw.get("description", "")),
            language=str(raw.get("language", "")),
            characters=int(raw["characters"]) if raw.get("characters") is not None else None,
            homepage=str(raw.get("homepage", "")),
            notes=str(raw.get("notes", "")),
        )

    def to_json(self) -> dict[str, Any]:
        """The catalog record for this entry (``size`` back under its catalog name ``bytes``)."""
        return {
            "name": self.name,
            "title": self.title,
            "url": self.url,
            "homepage": self.homepage,
            "bytes": self.size,
            "characters": self.characters,
            "sha256": self.sha256,
            "language": self.language,
            "licence": self.licence,
            "description": self.description,
            "notes": self.notes,
        }


def load_catalog() -> list[CorpusEntry]:
    """Read the catalog shipped inside the installed package (works from wheels and zips too)."""
    try:
        text = resources.files("charrnn.corpora").joinpath("catalog.json").read_text(encoding="utf-8")
        records = json.loads(text)
    except (OSError, ModuleNotFoundError, json.JSONDecodeError) as err:
        raise CharrnnError(f"cannot read the corpus catalog ({err}); reinstall charrnn") from err
    if not isinstance(records, list):
        raise CharrnnError("the corpus catalog is not a JSON list; reinstall charrnn")
    return [CorpusEntry.from_json(record) for record in records]


def find_entry(name: str) -> CorpusEntry:
    """Look a corpus up by name, suggesting the closest names when it is not there."""
    entries = load_catalog()
    for entry in entries:
        if entry.name == name:
            return entry
    names = [entry.name for entry in entries]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise CharrnnError(f"unknown corpus {name!r}; {hint}known corpora: {', '.join(names)} (see `charrnn corpus list`)")


def cached_path(entry: CorpusEntry) -> Path:
    """Where ``fetch`` keeps the verified file for ``entry``."""
    return cache_dir() / "corpora" / f"{entry.name}.txt"


def is_cached(entry: CorpusEntry) -> bool:
    """Cheap check (existence and size, no hashing) for listings; ``fetch`` does the full check."""
    try:
        return cached_path(entry).stat().st_size == entry.size
    except OSError:
        return False


def verify_file(path: Path, entry: CorpusEntry) -> bool:
    """True if ``path`` has exactly the catalog's size and SHA-256 (size first: it is free)."""
    try:
        if path.stat().st_size != entry.size:
            return False
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except OSError:
        return False
    return digest.hexdigest() == entry.sha256


def source_url(entry: CorpusEntry, url: str | None = None) -> str:
    """Where to download from: ``url`` (or a local file), else the mirror, else the catalog's URL.

    The mirror, ``$CHARRNN_CORPUS_MIRROR/<name>.txt``, lets users behind a proxy or offline keep
    one directory of corpora for everyone.
    """
    if url:
        # A plain local path (a copy fetched by hand) is accepted as well as any URL urllib reads.
        return Path(url).resolve().as_uri() if "://" not in url and Path(url).is_file() else url
    if mirror := os.environ.get(MIRROR_ENV, "").strip():
        return f"{mirror.rstrip('/')}/{entry.name}.txt"
    return entry.url


def fetch(
    entry: CorpusEntry,
    *,
    url: str | None = None,
    progress: ProgressCallback | None = None,
    timeout: float = 60,
) -> Path:
    """Return the path of a verified local copy of ``entry``, downloading it if needed.

    A cached copy that verifies is returned without touching the network; one that does
    not (truncated, edited, corrupted) is downloaded again. The download streams into a
    temporary file next to the destination and is hashed on the way, so a bad or partial
    download never replaces anything and is deleted; only a verified file is moved into
    place, atomically, so concurrent fetches and interrupted ones are both safe.
    """
    dest = cached_path(entry)
    if verify_file(dest, entry):
        return dest
    source = source_url(entry, url)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CharrnnError(f"cannot create the corpus cache {dest.parent}: {err.strerror}") from err
    # A unique name per attempt (not mkstemp) so that the final file gets normal umask permissions.
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    try:
        with tmp.open("xb") as out:
            received, actual = _download(entry, source, out, progress, timeout)
        if received != entry.size:
            got = f"more than {entry.size}" if received > entry.size else str(received)
            raise CharrnnError(
                f"size mismatch for corpus {entry.name!r} from {source}: expected {entry.size} bytes, "
                f"got {got}; download discarded (retry, or check {{url}} / ${MIRROR_ENV})",
                settings=("url",),
            )
        if actual != entry.sha256:
            raise CharrnnError(
                f"checksum mismatch for corpus {entry.name!r} from {source}: expected sha256 "
                f"{entry.sha256}, got {actual}; download discarded (retry, or check {{url}} / ${MIRROR_ENV})",
                settings=("url",),
            )
        os.replace(tmp, dest)
    except OSError as err:
        raise CharrnnError(f"cannot write corpus {entry.name!r} to {dest.parent}: {err}") from err
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _download(
    entry: CorpusEntry,
    source: str,
    out: IO[bytes],
    progress: ProgressCallback | None,
    timeout: float,
) -> tuple[int, str]:
    """Stream ``source`` into ``out``; return (bytes received, hex SHA-256).

    Stops reading once more than the expected size has arrived, so a wrong URL cannot fill the disk.
    """
    request = urllib.request.Request(source, headers={"User-Agent": f"charrnn/{__version__}"})
    digest = hashlib.sha256()
    received = 0
    where = urllib.parse.urlsplit(source).netloc or source
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if progress is not None:
                progress(0, entry.size)
            while chunk := response.read(_CHUNK):
                received += len(chunk)
                if received > entry.size:
                    # More than the catalog says: wrong file (an HTML error page, a newer version...).
                    break
                digest.update(chunk)
                try:
                    out.write(chunk)
                except OSError as err:
                    raise CharrnnError(f"cannot write corpus {entry.name!r} to {out.name}: {err}") from err
                if progress is not None:
                    progress(received, entry.size)
    except urllib.error.HTTPError as err:
        raise CharrnnError(
            f"download of corpus {entry.name!r} failed: HTTP {err.code} {err.reason} from {source}"
        ) from err
    except urllib.error.URLError as err:
        reason = err.reason.strerror if isinstance(err.reason, OSError) and err.reason.strerror else err.reason
        raise CharrnnError(
            f"cannot download corpus {entry.name!r} from {where}: {reason}; check the network, "
            f"or pass {{url}} / set ${MIRROR_ENV} to a reachable copy",
            settings=("url",),
        ) from err
    except (OSError, http.client.HTTPException) as err:  # timeouts, resets, TLS failures, short reads
        raise CharrnnError(
            f"download of corpus {entry.name!r} from {where} failed ({err or type(err).__name__}); retry"
        ) from err
    except ValueError as err:  # urllib's "unknown url type" for a malformed --url
        raise CharrnnError(f"invalid download URL {source!r} for corpus {entry.name!r}: {err}") from err
    return received, digest.hexdigest()
