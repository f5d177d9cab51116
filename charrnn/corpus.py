"""Corpus preparation: text -> vocabulary + encoded train/validation splits, cached on disk.

`prepare` streams the text in chunks (a 200 MB file of one line, or one larger than memory, needs
only a few chunks' worth), and stores in the cache, keyed by the text's SHA-256 and the validation
fraction: ``vocab.json``, ``train.npy``, ``val.npy`` (ids in the smallest unsigned dtype,
memory-mapped by training) and ``stats.json``. A second call with the same text is a lookup.
"""

import codecs
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from charrnn.config import check_text_options
from charrnn.errors import CorpusError
from charrnn.paths import cache_dir
from charrnn.vocab import Vocabulary

BUILTIN_NAME = "pydoc"
FORMAT_VERSION = 1
CHUNK_BYTES = 16 << 20  # bytes read and decoded at a time
CODE_POINTS = 0x110000


def builtin_text() -> str:
    """Python's own reference documentation (``pydoc_data``, shipped with CPython): ~450k characters
    of English prose and code, always available offline, so the quickstart trains on something real."""
    try:
        from pydoc_data.topics import topics
    except ImportError as error:  # some distributions strip pydoc_data
        raise CorpusError("this Python has no pydoc_data; give a corpus file instead") from error
    return "\n\n".join(topics[key].strip("\n") for key in sorted(topics)) + "\n"


def _open_source(source: str, stack: ExitStack) -> tuple[BinaryIO, str]:
    """A binary stream of the corpus and its label for messages."""
    if source == "-":
        return sys.stdin.buffer, "standard input"
    path = Path(source)
    if not path.exists():
        raise CorpusError(f"corpus {source} does not exist")
    if path.is_dir():
        raise CorpusError(f"corpus {source} is a directory, not a text file")
    try:
        return stack.enter_context(path.open("rb")), source
    except PermissionError as error:
        raise CorpusError(f"corpus {source} is not readable (permission denied)") from error
    except OSError as error:
        raise CorpusError(f"corpus {source} cannot be read: {error.strerror or error}") from error


def read_chunks(
    source: str,
    *,
    encoding: str = "utf-8",
    errors: str = "strict",
    chunk_bytes: int = CHUNK_BYTES,
    label: str | None = None,
) -> Iterator[str]:
    """The corpus text of a path, ``-`` (stdin) or the built-in name, exactly as stored (``\\r\\n``
    kept), as decoded chunks of about `chunk_bytes` bytes each. Every problem is a CorpusError that
    says what to do: missing, empty, binary (a NUL byte), undecodable (with the byte offset).
    `label` names the corpus in those messages (default: `source`)."""
    if source == BUILTIN_NAME and not Path(source).exists():
        yield builtin_text()
        return
    check_text_options(encoding, errors)
    decoder = codecs.getincrementaldecoder(encoding)(errors)
    with ExitStack() as stack:
        stream, opened = _open_source(source, stack)
        label = label or opened
        offset = 0  # bytes read before the current chunk
        while True:
            try:
                data = stream.read(chunk_bytes)
            except OSError as error:
                raise CorpusError(f"corpus {label} cannot be read: {error.strerror or error}") from error
            if offset == 0:
                if not data:
                    raise CorpusError(f"corpus {label} is empty")
                if b"\x00" in data[: 1 << 20] and errors == "strict":
                    nul = data.index(b"\x00")
                    raise CorpusError(f"corpus {label} looks binary (NUL byte at offset {nul}); give a text file")
            pending = len(decoder.getstate()[0])  # undecoded bytes carried over from the previous chunk
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as error:
                raise CorpusError(
                    f"corpus {label} is not valid {encoding} (bad byte at offset {offset - pending + error.start}); "
                    "try --encoding or --errors replace"
                ) from error
            if text:
                yield text
            if not data:
                return
            offset += len(data)


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)


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
    chunk_bytes: int = CHUNK_BYTES,
) -> tuple[PreparedCorpus, bool]:
    """Prepare `source` (or find it already prepared). Returns the corpus and whether it was cached.

    Two passes over the text, chunk by chunk: the first hashes it and counts every character, the
    second writes the ids straight into the memory-mapped ``.npy`` files.
    """
    with ExitStack() as stack:
        if source == "-":  # read standard input once, into a file both passes can read
            spool = stack.enter_context(tempfile.NamedTemporaryFile(prefix="charrnn-stdin-"))
            shutil.copyfileobj(sys.stdin.buffer, spool, CHUNK_BYTES)
            spool.flush()
            source, label = spool.name, "standard input"
        else:
            label = source

        def chunks() -> Iterator[str]:
            return read_chunks(source, encoding=encoding, errors=errors, chunk_bytes=chunk_bytes, label=label)

        digest = hashlib.sha256()
        counts = np.zeros(CODE_POINTS, dtype=np.int64)
        for text in chunks():
            digest.update(text.encode("utf-8", errors="surrogatepass"))
            counts += np.bincount(_code_points(text), minlength=CODE_POINTS)
        digest = digest.hexdigest()
        directory = (root or cache_dir() / "prep") / f"{digest[:24]}-val{val_fraction:g}-v{FORMAT_VERSION}"
        if (directory / "stats.json").exists():
            try:
                return load_prepared(directory), True
            except (OSError, ValueError, KeyError):
                shutil.rmtree(directory, ignore_errors=True)  # a damaged cache entry is rebuilt

        present = np.flatnonzero(counts)
        vocab = Vocabulary(tuple(chr(code) for code in present))  # code-point order, like from_text
        total = int(counts.sum())
        n_val = max(2, int(round(total * val_fraction)))
        if total - n_val < 2:
            raise CorpusError(
                f"corpus {label} is too short: {total} characters; training needs at least "
                "--batch-size × --seq-len + 1 characters (1,025 with the defaults) plus the validation part"
            )
        most_common = present[np.argsort(-counts[present], kind="stable")[:10]]
        stats = {
            "source": label,
            "sha256": digest,
            "characters": total,
            "vocab_size": len(vocab),
            "dtype": str(vocab.dtype),
            "train_characters": total - n_val,
            "val_characters": n_val,
            "val_fraction": val_fraction,
            "most_common": [[chr(code), int(counts[code])] for code in most_common],
        }
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=".staging-"))
        try:
            vocab.save(staging / "vocab.json")
            _write_ids(chunks(), vocab, present, staging, total - n_val, n_val)
            (staging / "stats.json").write_text(json.dumps(stats, ensure_ascii=False, indent=1), encoding="utf-8")
            try:
                os.rename(staging, directory)  # atomic: a reader sees all files or none
            except OSError:  # another process prepared the same text meanwhile
                shutil.rmtree(staging, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return load_prepared(directory), False


def _write_ids(
    chunks: Iterator[str], vocab: Vocabulary, present: np.ndarray, directory: Path, n_train: int, n_val: int
) -> None:
    """Encode the text chunk by chunk into ``train.npy`` (the first `n_train` ids) and ``val.npy``."""
    table = np.zeros(CODE_POINTS, dtype=vocab.dtype)  # code point -> id
    table[present] = np.arange(len(present))
    train = np.lib.format.open_memmap(directory / "train.npy", mode="w+", dtype=vocab.dtype, shape=(n_train,))
    val = np.lib.format.open_memmap(directory / "val.npy", mode="w+", dtype=vocab.dtype, shape=(n_val,))
    position = 0
    for text in chunks:
        ids = table[_code_points(text)]
        if position + len(ids) > n_train + n_val:
            break
        in_train = min(len(ids), max(0, n_train - position))  # how many of these ids are training ids
        train[position : position + in_train] = ids[:in_train]
        start = position + in_train - n_train  # where the rest go in the validation split
        val[start : start + len(ids) - in_train] = ids[in_train:]
        position += len(ids)
    if position != n_train + n_val:
        raise CorpusError("the corpus changed while it was being prepared; try again")
    train.flush()
    val.flush()


def load_prepared(directory: Path) -> PreparedCorpus:
    stats = json.loads((directory / "stats.json").read_text(encoding="utf-8"))
    return PreparedCorpus(
        directory=directory,
        vocab=Vocabulary.load(directory / "vocab.json"),
        train=np.load(directory / "train.npy", mmap_mode="r"),
        val=np.load(directory / "val.npy", mmap_mode="r"),
        stats=stats,
    )
