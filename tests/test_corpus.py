import io
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from charrnn.corpus import builtin_text, prepare, read_chunks
from charrnn.errors import CorpusError, UsageError
from charrnn.vocab import Vocabulary

MIXED = "line one\r\nline two 床前明月光\r\n" * 50 + "🎉 end\n"


def read_text(source: str, **options) -> str:
    return "".join(read_chunks(source, **options))


def test_prepare_splits_caches_and_round_trips(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(MIXED.encode("utf-8"))
    prepared, cached = prepare(str(path), val_fraction=0.2)
    assert not cached
    assert len(prepared.train) + len(prepared.val) == len(MIXED)
    assert len(prepared.val) == round(len(MIXED) * 0.2)
    assert prepared.vocab.decode(np.concatenate([prepared.train, prepared.val])) == MIXED
    assert prepared.train.dtype == np.uint8  # < 256 distinct characters
    assert isinstance(prepared.train, np.memmap)
    again, cached = prepare(str(path), val_fraction=0.2)
    assert cached and again.directory == prepared.directory
    most_common = prepared.stats["most_common"]
    assert all(count == MIXED.count(char) for char, count in most_common)
    assert [count for _, count in most_common] == sorted((MIXED.count(c) for c in set(MIXED)), reverse=True)[:10]


@pytest.mark.parametrize("chunk_bytes", [1, 3, 7, 64, 1 << 20])
def test_streaming_in_chunks_matches_encoding_the_whole_text(tmp_path, chunk_bytes):
    """Chunks split multi-byte characters and the train/validation boundary: the ids must not change."""
    path = tmp_path / "c.txt"
    path.write_bytes(MIXED.encode("utf-8"))
    prepared, _ = prepare(str(path), val_fraction=0.3, chunk_bytes=chunk_bytes, root=tmp_path / f"p{chunk_bytes}")
    reference = Vocabulary.from_text(MIXED)
    assert prepared.vocab == reference
    expected = reference.encode(MIXED)
    assert np.array_equal(np.concatenate([prepared.train, prepared.val]), expected)
    assert len(prepared.train) == len(MIXED) - round(len(MIXED) * 0.3)


def test_standard_input_is_prepared_like_a_file(tmp_path, monkeypatch):
    path = tmp_path / "c.txt"
    path.write_bytes(MIXED.encode("utf-8"))
    from_file, _ = prepare(str(path), root=tmp_path / "a")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(MIXED.encode("utf-8"))))
    from_stdin, _ = prepare("-", root=tmp_path / "b", chunk_bytes=5)
    assert from_stdin.stats["sha256"] == from_file.stats["sha256"]
    assert from_stdin.stats["source"] == "standard input"
    assert np.array_equal(from_stdin.train, from_file.train) and np.array_equal(from_stdin.val, from_file.val)


def test_bad_standard_input_is_named_as_such(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"hello \xff world" * 100)))
    with pytest.raises(CorpusError, match=r"^corpus standard input is not valid utf-8 \(bad byte at offset 6\)"):
        prepare("-", root=tmp_path)


def test_builtin_corpus_is_real_text():
    text = builtin_text()
    assert len(text) > 100_000
    assert "the" in text and "\n" in text


@pytest.mark.parametrize("chunk_bytes", [3, 1 << 20])
def test_invalid_utf8_names_the_byte_offset(tmp_path, chunk_bytes):
    path = tmp_path / "bad.txt"
    path.write_bytes("héllo wörld ".encode() * 3 + b"\xff tail")  # the bad byte is at offset 3 × 14 = 42
    with pytest.raises(CorpusError, match=r"offset 42\)"):
        read_text(str(path), chunk_bytes=chunk_bytes)
    assert read_text(str(path), errors="replace", chunk_bytes=chunk_bytes).endswith("wörld \ufffd tail")


def test_truncated_character_at_the_end_is_an_error(tmp_path):
    path = tmp_path / "cut.txt"
    path.write_bytes("abc床".encode()[:-1])
    with pytest.raises(CorpusError, match=r"offset 3\)"):
        read_text(str(path), chunk_bytes=2)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "is empty"), (b"ab\x00cd", "binary"), (None, "does not exist")],
)
def test_unusable_corpora_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "x.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CorpusError, match=message):
        read_text(str(path))


def test_directory_is_rejected(tmp_path):
    with pytest.raises(CorpusError, match="directory"):
        read_text(str(tmp_path))


def test_unknown_encoding_is_rejected(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("abc")
    with pytest.raises(UsageError, match="^unknown encoding 'klingon'"):  # the command says --encoding
        read_text(str(path), encoding="klingon")
    with pytest.raises(UsageError, match="^errors must be strict, replace or ignore, not 'banana'"):
        read_text(str(path), errors="banana")


def test_a_long_single_line_is_prepared_in_bounded_memory(tmp_path):
    """64 MB of text without a newline, in 1 MB chunks: memory stays far below the size of the text
    (reading it whole takes ~6× its size: bytes, str, UTF-32 code points, ids)."""
    path = tmp_path / "line.txt"
    with path.open("wb") as out:
        for _ in range(64):
            out.write((b"to be or not to be, that is the question " * 30_000)[: 1 << 20])
    script = (
        "import resource, sys; from charrnn.corpus import prepare; from pathlib import Path\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "prepared, _ = prepare(sys.argv[1], root=Path(sys.argv[2]), chunk_bytes=1 << 20)\n"
        "print(len(prepared.train) + len(prepared.val), before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path), str(tmp_path / "prep")], capture_output=True, text=True, check=True
    )
    characters, before_kb, peak_kb = map(int, done.stdout.split())
    assert characters == 64 << 20
    # The ids themselves (64 MB of uint8) are written through a memory map, and count in the resident
    # size as pages are touched; everything else must stay within a few chunks' worth.
    assert (peak_kb - before_kb) * 1024 < (64 << 20) + (40 << 20), (before_kb, peak_kb)


def feed_pipe(path, data: bytes) -> threading.Thread:
    """A producer writing `data` into the named pipe `path` (it blocks until a reader opens it)."""

    def produce() -> None:
        with open(path, "wb") as pipe:
            pipe.write(data)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    return thread


def leftovers(root) -> list[str]:
    """What the preparation cache holds besides complete entries (spools, staging directories)."""
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".") or not (p / "stats.json").exists())


@pytest.mark.parametrize("chunk_bytes", [5, 1 << 20])
def test_a_named_pipe_is_read_once_and_prepared_like_the_file(tmp_path, chunk_bytes):
    """`charrnn train <(zcat big.gz)` and `mkfifo`: a pipe can be read only once, so the text is
    spooled while it is hashed and counted, and encoded from the spool."""
    (tmp_path / "c.txt").write_bytes(MIXED.encode("utf-8"))
    os.mkfifo(tmp_path / "fifo")
    producer = feed_pipe(tmp_path / "fifo", MIXED.encode("utf-8"))
    root = tmp_path / "prep"
    from_pipe, cached = prepare(str(tmp_path / "fifo"), val_fraction=0.2, root=root, chunk_bytes=chunk_bytes)
    producer.join(timeout=10)
    assert not cached and not producer.is_alive()
    assert from_pipe.vocab.decode(np.concatenate([from_pipe.train, from_pipe.val])) == MIXED
    from_file, cached = prepare(str(tmp_path / "c.txt"), val_fraction=0.2, root=root)
    assert cached and from_file.directory == from_pipe.directory  # the same text, the same entry
    assert leftovers(root) == []


def test_documents_given_as_pipes_are_each_read_once(tmp_path):
    texts = ["first document\n", "second one, 第二\n"]
    for number, text in enumerate(texts):
        (tmp_path / f"d{number}.txt").write_text(text)
        os.mkfifo(tmp_path / f"p{number}")
    producers = [feed_pipe(tmp_path / f"p{n}", text.encode()) for n, text in enumerate(texts)]
    root = tmp_path / "prep"
    piped, _ = prepare([str(tmp_path / "p0"), str(tmp_path / "p1")], val_fraction=0.2, root=root)
    for producer in producers:
        producer.join(timeout=10)
    assert piped.vocab.decode(np.concatenate([piped.train, piped.val])) == "\x1e".join(texts) + "\x1e"
    assert piped.stats["documents"] == 2 and leftovers(root) == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "corpus {} is empty"),  # the producer failed before writing anything
        (b"good text, then cut \xe2\x82", "corpus {} is not valid utf-8 (bad byte at offset 20)"),  # cut mid-character
        (b"text\x00\x01binary", "corpus {} looks binary (NUL byte at offset 4); give a text file"),
    ],
)
def test_a_pipe_that_fails_is_one_error_and_leaves_nothing_behind(tmp_path, data, message):
    os.mkfifo(tmp_path / "fifo")
    producer = feed_pipe(tmp_path / "fifo", data)
    root = tmp_path / "prep"
    with pytest.raises(CorpusError) as error:
        prepare(str(tmp_path / "fifo"), val_fraction=0.2, root=root)
    producer.join(timeout=10)
    assert str(error.value).startswith(message.format(tmp_path / "fifo"))
    assert not root.exists() or leftovers(root) == []


def test_a_regular_file_that_changes_between_the_two_passes_is_refused(tmp_path, monkeypatch):
    from charrnn import corpus as corpus_module

    path = tmp_path / "c.txt"
    path.write_text("original text " * 100)
    first_pass = corpus_module._first_pass

    def and_then_edit(*args, **kwargs):
        result = first_pass(*args, **kwargs)
        path.write_text("replaced text " * 100)  # the same length, other characters' counts
        return result

    monkeypatch.setattr(corpus_module, "_first_pass", and_then_edit)
    with pytest.raises(CorpusError, match="changed while it was being prepared; try again"):
        prepare(str(path), val_fraction=0.2, root=tmp_path / "prep")
    assert leftovers(tmp_path / "prep") == []
