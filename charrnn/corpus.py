"""Corpus preparation: text -> vocabulary + encoded train/validation splits, cached on disk.

`prepare` streams the text in chunks (a 200 MB file of one line, or one larger than memory, needs
only a few chunks' worth), and stores in the cache, keyed by the text's SHA-256, the validation
fraction and ``--min-count`` (when above 1): ``vocab.json``, ``train.npy``, ``val.npy`` (ids in the
smallest unsigned dtype, memory-mapped by training) and ``stats.json``. A second call with the same text is a lookup.

Longer than most modules, for a reason: one pipeline (read once, count, encode, cache), with
its documents and its spool, which reads best in one piece.
"""

import codecs
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from charrnn.config import check_text_options
from charrnn.errors import ConfigError, CorpusError, UsageError, Warn
from charrnn.paths import cache_dir, standard_input, why_unreadable
from charrnn.vocab import Vocabulary

BUILTIN_NAME = "pydoc"
FORMAT_VERSION = 1
CHUNK_BYTES = 16 << 20  # bytes read and decoded at a time
CODE_POINTS = 0x110000
# Documents (a folder, or several files) are joined with this character after each one. U+001E
# RECORD SEPARATOR is a control character that no ordinary text contains (a document that does is
# refused); the model sees it, learns where documents end, and training resets the recurrent state
# where it is read, so no document leaks into the next.
BOUNDARY = "\x1e"


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
        return standard_input(), "standard input"
    path = Path(source)
    if not path.exists():
        raise CorpusError(f"corpus {source} does not exist")
    if path.is_dir():
        raise CorpusError(f"corpus {source} is a directory, not a text file")
    try:
        return stack.enter_context(path.open("rb")), source
    except OSError as error:
        raise CorpusError(f"corpus {source} {why_unreadable(error)}") from error


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
                    "try {encoding} or {errors}",
                    settings={"encoding": None, "errors": "replace"},
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
    source: str | Sequence[str],
    *,
    val_fraction: float = 0.1,
    encoding: str = "utf-8",
    errors: str = "strict",
    root: Path | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    base_vocab: Vocabulary | None = None,
    warn: Warn = lambda _: None,
    min_count: int = 1,
) -> tuple[PreparedCorpus, bool]:
    """Prepare `source` (or find it already prepared). Returns the corpus and whether it was cached.

    Two passes over the text, chunk by chunk: the first reads it (once: pipes and standard input
    are spooled as they are read, see `_first_pass`), hashes it and counts every character; the
    second writes the ids straight into the ``.npy`` files (memory-mapped when read). Characters seen fewer than
    `min_count` times all become the vocabulary's one unknown symbol.

    With `base_vocab` (a model continued on new text), the text is encoded with that vocabulary,
    extended by the characters it lacks, so the base's ids keep their meaning; the cache key then
    covers the base vocabulary too, unless it equals the text's own.

    A folder (every file below it, in sorted order, hidden ones excepted) or several files are
    documents: joined with `BOUNDARY` after each, hashed by their names, order and contents; files
    found in a folder that are binary, undecodable or empty are skipped with a `warn`ing.
    """
    if min_count < 1:
        raise ConfigError("min_count", f"must be at least 1, not {min_count}")
    sources = [source] if isinstance(source, str) else list(source)
    if not sources:
        raise UsageError("no corpus given")
    if len(sources) > 1 or (sources[0] not in ("-", BUILTIN_NAME) and Path(sources[0]).is_dir()):
        if "-" in sources:
            raise UsageError("standard input ('-') cannot be one of several documents")
        label = " ".join(sources)
        with ExitStack() as stack:
            documents = _count_documents(
                _collect_documents(sources), label, encoding, errors, chunk_bytes, warn, stack, root
            )
            return _prepare_counted(documents, val_fraction, root, base_vocab, min_count)
    source = sources[0]
    label = "standard input" if source == "-" else source
    with ExitStack() as stack:
        first = _first_pass(source, label, encoding, errors, chunk_bytes, stack, root)
        counts = np.zeros(CODE_POINTS, dtype=np.int64)
        counts[: len(first.counts)] = first.counts
        counted = _Counted(label, first.digest, counts, first.chunks, {})
        return _prepare_counted(counted, val_fraction, root, base_vocab, min_count)


@dataclass(frozen=True)
class _FirstPass:
    """One text after its single read: its SHA-256 and character counts, and the text again for the
    second pass (from the spool, or from the file itself)."""

    digest: str
    counts: np.ndarray  # occurrences of every code point up to the largest seen
    chunks: Callable[[], Iterator[str]]


def _first_pass(
    source: str, label: str, encoding: str, errors: str, chunk_bytes: int, stack: ExitStack, root: Path | None
) -> _FirstPass:
    """Read `source` once, hashing and counting it. Standard input, pipes (``<(zcat big.gz)``, a
    ``mkfifo``) and devices can be read only once, so their decoded text is copied as it is read into
    a spool: an anonymous file in the preparation cache, gone when `stack` closes or the process dies.
    A regular file is not copied (that would cost its size in disk): it is read again for the second
    pass, and only when the text is not in the cache yet, and must hash the same the second time."""
    spool = None
    if source == "-" or (source != BUILTIN_NAME and not _is_regular_file(source)):
        spool_dir = root or cache_dir() / "prep"
        try:
            spool_dir.mkdir(parents=True, exist_ok=True)
            spool = stack.enter_context(tempfile.TemporaryFile(dir=spool_dir, prefix=".spool-"))
        except OSError as error:
            raise CorpusError(f"cannot keep a copy of {label} in {spool_dir}: {error.strerror or error}") from error
    digest = hashlib.sha256()
    counts = np.zeros(0, dtype=np.int64)
    for text in read_chunks(source, encoding=encoding, errors=errors, chunk_bytes=chunk_bytes, label=label):
        data = text.encode("utf-8", errors="surrogatepass")
        digest.update(data)
        counts = _add_counts(counts, np.bincount(_code_points(text)))
        if spool is not None:
            try:
                spool.write(data)
            except OSError as error:
                raise CorpusError(f"cannot keep a copy of {label}: {error.strerror or error}") from error
    if spool is not None:
        spool.flush()
        return _FirstPass(digest.hexdigest(), counts, lambda: _read_spool(spool, chunk_bytes))

    def again() -> Iterator[str]:
        check = hashlib.sha256()
        for text in read_chunks(source, encoding=encoding, errors=errors, chunk_bytes=chunk_bytes, label=label):
            check.update(text.encode("utf-8", errors="surrogatepass"))
            yield text
        if check.hexdigest() != digest.hexdigest():
            raise CorpusError(f"corpus {label} changed while it was being prepared; try again")

    return _FirstPass(digest.hexdigest(), counts, again)


def _is_regular_file(source: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(source).st_mode)
    except (OSError, ValueError):
        return False  # reading it says what is wrong


def _add_counts(total: np.ndarray, part: np.ndarray) -> np.ndarray:
    if len(part) > len(total):
        total, part = part, total
    total[: len(part)] += part
    return total


def _read_spool(spool: BinaryIO, chunk_bytes: int) -> Iterator[str]:
    """The text a spool holds (UTF-8, lone surrogates passed through as they were hashed)."""
    spool.seek(0)
    decoder = codecs.getincrementaldecoder("utf-8")("surrogatepass")
    while data := spool.read(chunk_bytes):
        if text := decoder.decode(data):
            yield text
    if tail := decoder.decode(b"", final=True):
        yield tail


@dataclass(frozen=True)
class _Counted:
    """A corpus after the first pass: what `_prepare_counted` needs to find or write its cache entry."""

    label: str
    digest: str
    counts: np.ndarray  # occurrences of every code point
    chunks: Callable[[], Iterator[str]]  # the text again, for the second pass
    extra_stats: dict[str, Any]


def _prepare_counted(
    counted: _Counted, val_fraction: float, root: Path | None, base_vocab: Vocabulary | None, min_count: int = 1
) -> tuple[PreparedCorpus, bool]:
    label, digest, counts, chunks = counted.label, counted.digest, counted.counts, counted.chunks
    if base_vocab is not None and min_count > 1:
        raise UsageError(
            "{min_count} cannot be combined with {parent} (the parent's vocabulary is kept whole)",
            settings=("min_count", "parent"),
        )
    frequent = counts >= min_count
    if counted.extra_stats.get("documents"):
        frequent[ord(BOUNDARY)] = True  # the document boundary is never rare
    present = np.flatnonzero(frequent)
    rare = np.flatnonzero((counts > 0) & ~frequent)
    if len(rare):  # code-point order, like from_text, then the unknown symbol
        vocab = Vocabulary.with_unknown(chr(code) for code in present)
    else:
        vocab = Vocabulary(tuple(chr(code) for code in present))
    key = cache_entry(digest, val_fraction, min_count=min_count).name
    if base_vocab is not None and base_vocab.chars != vocab.chars:
        vocab = base_vocab.extended(vocab.chars)
        key += "-vocab" + _vocab_key(vocab)
    directory = (root or cache_dir() / "prep") / key
    if (directory / "stats.json").exists():
        try:
            return load_prepared(directory), True
        except (OSError, ValueError, KeyError):
            shutil.rmtree(directory, ignore_errors=True)  # a damaged cache entry is rebuilt

    total = int(counts.sum())
    n_val = max(2, int(round(total * val_fraction)))
    if total - n_val < 2:
        raise CorpusError(
            f"corpus {label} is too short: {total} characters; training needs at least "
            "{batch_size} × {seq_len} + 1 characters (1,025 with the defaults) plus the validation part",
            settings=("batch_size", "seq_len"),
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
        **counted.extra_stats,
    }
    if min_count > 1:
        stats |= {"min_count": min_count, "rare_characters": len(rare), "rare_occurrences": int(counts[rare].sum())}
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=".staging-"))
    try:
        vocab.save(staging / "vocab.json")
        _write_ids(chunks(), vocab, rare, staging, total - n_val, n_val)
        (staging / "stats.json").write_text(json.dumps(stats, ensure_ascii=False, indent=1), encoding="utf-8")
        try:
            os.rename(staging, directory)  # atomic: a reader sees all files or none
        except OSError:  # another process prepared the same text meanwhile
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_prepared(directory), False


@dataclass(frozen=True)
class _Document:
    path: Path
    name: str  # in messages: as given, or the folder as given / its path below it
    key: str  # in the cache key: its path below its folder, or a named file's own name (not where it is)
    in_folder: bool  # found in a folder (skipped with a warning when unreadable) or named (an error)


def _collect_documents(sources: list[str]) -> list[_Document]:
    documents = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found = sorted(
                p.relative_to(path)
                for p in path.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise CorpusError(f"folder {source} has no text files")
            documents += [_Document(path / name, str(path / name), name.as_posix(), True) for name in found]
        else:
            documents.append(_Document(path, source, path.name, False))
    return documents


def _count_documents(
    documents: list[_Document],
    label: str,
    encoding: str,
    errors: str,
    chunk_bytes: int,
    warn: Warn,
    stack: ExitStack,
    root: Path | None,
) -> _Counted:
    """The first pass over documents: hash and count each (each read once, see `_first_pass`),
    skipping unreadable ones found in folders."""
    digest = hashlib.sha256(b"charrnn documents v1\n")
    counts = np.zeros(CODE_POINTS, dtype=np.int64)
    kept = []
    for document in documents:
        try:
            first = _first_pass(str(document.path), document.name, encoding, errors, chunk_bytes, stack, root)
            if len(first.counts) > ord(BOUNDARY) and first.counts[ord(BOUNDARY)]:
                raise CorpusError(f"corpus {document.name} contains U+001E, the character that separates documents")
        except CorpusError as error:
            if not document.in_folder:
                raise
            reason = error.message.removeprefix(f"corpus {document.name} ").removesuffix("; give a text file")
            warn(CorpusError(f"skipped {document.name}: {reason}", settings=error.settings))
            continue
        counts[: len(first.counts)] += first.counts
        kept.append(first)
        digest.update(json.dumps([document.key, first.digest], ensure_ascii=False).encode() + b"\n")
    if not kept:
        raise CorpusError(f"{'folder ' if all(d.in_folder for d in documents) else ''}{label} has no text files")
    counts[ord(BOUNDARY)] += len(kept)

    def chunks() -> Iterator[str]:
        for first in kept:
            yield from first.chunks()
            yield BOUNDARY

    return _Counted(label, digest.hexdigest(), counts, chunks, {"documents": len(kept), "boundary": BOUNDARY})


def _write_ids(
    chunks: Iterator[str], vocab: Vocabulary, rare: np.ndarray, directory: Path, n_train: int, n_val: int
) -> None:
    """Encode the text chunk by chunk into ``train.npy`` (the first `n_train` ids) and ``val.npy``;
    the `rare` code points become the unknown symbol."""
    table = np.zeros(CODE_POINTS, dtype=vocab.dtype)  # code point -> id
    table[[ord(char) for char in vocab.chars]] = np.arange(len(vocab))
    if vocab.unknown_id is not None:
        table[rare] = vocab.unknown_id
    # Written with plain sequential writes, not through memory maps: pages of a written map stay
    # resident (2.6 GB for a 2 GB text's uint16 ids), while written file data is the kernel's to evict.
    with open(directory / "train.npy", "wb") as train, open(directory / "val.npy", "wb") as val:
        for file, count in ((train, n_train), (val, n_val)):
            header = {"descr": np.lib.format.dtype_to_descr(vocab.dtype), "fortran_order": False, "shape": (count,)}
            np.lib.format.write_array_header_1_0(file, header)
        position = 0
        for text in chunks:
            ids = table[_code_points(text)]
            if position + len(ids) > n_train + n_val:
                break
            in_train = min(len(ids), max(0, n_train - position))  # how many of these ids are training ids
            train.write(ids[:in_train].tobytes())
            val.write(ids[in_train:].tobytes())
            position += len(ids)
    if position != n_train + n_val:
        raise CorpusError("the corpus changed while it was being prepared; try again")


def cache_entry(digest: str, val_fraction: float, root: Path | None = None, *, min_count: int = 1) -> Path:
    """Where the text with SHA-256 `digest`, split at `val_fraction`, is (or will be) prepared."""
    rare_key = f"-min{min_count}" if min_count > 1 else ""
    return (root or cache_dir() / "prep") / f"{digest[:24]}-val{val_fraction:g}{rare_key}-v{FORMAT_VERSION}"


def find_prepared(
    digest: str, val_fraction: float, root: Path | None = None, *, min_count: int = 1, vocab: Vocabulary | None = None
) -> PreparedCorpus | None:
    """The cached preparation of the text with SHA-256 `digest`, if it is still in the cache intact;
    with `vocab` (a run's own vocabulary), only one encoded with it, which for a run continued from
    a parent's (see `prepare`'s `base_vocab`) is an entry of its own."""
    directory = cache_entry(digest, val_fraction, root, min_count=min_count)
    candidates = [directory]
    if vocab is not None:
        candidates.append(directory.with_name(directory.name + "-vocab" + _vocab_key(vocab)))
    for candidate in candidates:
        try:
            prepared = load_prepared(candidate)
        except (OSError, ValueError, KeyError):
            continue
        if prepared.stats.get("sha256") == digest and (vocab is None or prepared.vocab.chars == vocab.chars):
            return prepared
    return None


def _vocab_key(vocab: Vocabulary) -> str:
    return hashlib.sha256(vocab.to_json().encode()).hexdigest()[:12]


def rereadable(source: str) -> bool:
    """Whether a corpus path recorded by a run names something that can be read again: not standard
    input, nor a pipe that a shell handed over as ``/dev/fd/N`` (process substitution)."""
    return source != "-" and not source.startswith(("/dev/fd/", "/proc/self/fd/", "/dev/stdin"))


def boundary_id(corpus: "PreparedCorpus") -> int | None:
    """The id of the document boundary in a corpus of documents (where the state is reset), else None."""
    return corpus.vocab.index[BOUNDARY] if corpus.stats.get("documents") else None


def load_prepared(directory: Path) -> PreparedCorpus:
    stats = json.loads((directory / "stats.json").read_text(encoding="utf-8"))
    return PreparedCorpus(
        directory=directory,
        vocab=Vocabulary.load(directory / "vocab.json"),
        train=np.load(directory / "train.npy", mmap_mode="r"),
        val=np.load(directory / "val.npy", mmap_mode="r"),
        stats=stats,
    )
