"""Corpus preparation: text -> vocabulary + encoded train/validation splits, cached on disk.

`prepare` reads the text once, and stores in the cache, keyed by the text's SHA-256 and the
validation fraction: ``vocab.json``, ``train.npy``, ``val.npy`` (ids in the smallest unsigned
dtype, memory-mapped by training) and ``stats.json``. A second call with the same text is a lookup.
"""

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from charrnn.errors import CorpusError
from charrnn.paths import cache_dir
from charrnn.vocab import Vocabulary

BUILTIN_NAME = "pydoc"
FORMAT_VERSION = 1


def builtin_text() -> str:
    """Python's own reference documentation (``pydoc_data``, shipped with CPython): ~450k characters
    of English prose and code, always available offline, so the quickstart trains on something real."""
    try:
        from pydoc_data.topics import topics
    except ImportError as error:  # some distributions strip pydoc_data
        raise CorpusError("this Python has no pydoc_data; give a corpus file instead") from error
    return "\n\n".join(topics[key].strip("\n") for key in sorted(topics)) + "\n"


def read_text(source: str, *, encoding: str = "utf-8", errors: str = "strict") -> str:
    """The corpus text of a path, ``-`` (stdin) or the built-in name, exactly as stored (``\\r\\n`` kept)."""
    if source == BUILTIN_NAME and not Path(source).exists():
        return builtin_text()
    if source == "-":
        data = sys.stdin.buffer.read()
        label = "standard input"
    else:
        path = Path(source)
        if not path.exists():
            raise CorpusError(f"corpus {source} does not exist")
        if path.is_dir():
            raise CorpusError(f"corpus {source} is a directory, not a text file")
        try:
            data = path.read_bytes()
        except PermissionError as error:
            raise CorpusError(f"corpus {source} is not readable (permission denied)") from error
        except OSError as error:
            raise CorpusError(f"corpus {source} cannot be read: {error.strerror or error}") from error
        label = source
    if not data:
        raise CorpusError(f"corpus {label} is empty")
    if b"\x00" in data[: 1 << 20] and errors == "strict":
        offset = data.index(b"\x00")
        raise CorpusError(f"corpus {label} looks binary (NUL byte at offset {offset}); give a text file")
    try:
        return data.decode(encoding, errors=errors)
    except UnicodeDecodeError as error:
        raise CorpusError(
            f"corpus {label} is not valid {encoding} (bad byte at offset {error.start}); "
            "try --encoding or --errors replace"
        ) from error
    except LookupError as error:
        raise CorpusError(f"unknown --encoding {encoding!r}") from error


@dataclass(frozen=True)
class PreparedCorpus:
    """A corpus ready for training: its vocabulary and memory-mapped id splits."""

    directory: Path
    vocab: Vocabulary
    train: np.ndarray  # ids, memory-mapped
    val: np.ndarray
    stats: dict[str, Any]


def prepare(
    source: str,
    *,
    val_fraction: float = 0.1,
    encoding: str = "utf-8",
    errors: str = "strict",
    root: Path | None = None,
) -> tuple[PreparedCorpus, bool]:
    """Prepare `source` (or find it already prepared). Returns the corpus and whether it was cached."""
    text = read_text(source, encoding=encoding, errors=errors)
    digest = hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()
    directory = (root or cache_dir() / "prep") / f"{digest[:24]}-val{val_fraction:g}-v{FORMAT_VERSION}"
    if (directory / "stats.json").exists():
        try:
            return load_prepared(directory), True
        except (OSError, ValueError, KeyError):
            shutil.rmtree(directory, ignore_errors=True)  # a damaged cache entry is rebuilt

    vocab = Vocabulary.from_text(text)
    ids = vocab.encode(text)
    n_val = max(2, int(round(len(ids) * val_fraction)))
    if len(ids) - n_val < 2:
        raise CorpusError(
            f"corpus {source} is too short: {len(ids)} characters; training needs at least "
            "--batch-size × --seq-len + 1 characters (1,025 with the defaults) plus the validation part"
        )
    counts = Counter(text)
    stats = {
        "source": "standard input" if source == "-" else source,
        "sha256": digest,
        "characters": len(text),
        "vocab_size": len(vocab),
        "dtype": str(vocab.dtype),
        "train_characters": len(ids) - n_val,
        "val_characters": n_val,
        "val_fraction": val_fraction,
        "most_common": [[char, count] for char, count in counts.most_common(10)],
    }
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=".staging-"))
    try:
        vocab.save(staging / "vocab.json")
        np.save(staging / "train.npy", ids[: len(ids) - n_val])
        np.save(staging / "val.npy", ids[len(ids) - n_val :])
        (staging / "stats.json").write_text(json.dumps(stats, ensure_ascii=False, indent=1), encoding="utf-8")
        try:
            os.rename(staging, directory)  # atomic: a reader sees all files or none
        except OSError:  # another process prepared the same text meanwhile
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_prepared(directory), False


def load_prepared(directory: Path) -> PreparedCorpus:
    stats = json.loads((directory / "stats.json").read_text(encoding="utf-8"))
    return PreparedCorpus(
        directory=directory,
        vocab=Vocabulary.load(directory / "vocab.json"),
        train=np.load(directory / "train.npy", mmap_mode="r"),
        val=np.load(directory / "val.npy", mmap_mode="r"),
        stats=stats,
    )
