import numpy as np
import pytest

from charrnn.corpus import builtin_text, prepare, read_text
from charrnn.errors import CorpusError


def test_prepare_splits_caches_and_round_trips(tmp_path):
    text = "line one\r\nline two 床前明月光\r\n" * 50
    path = tmp_path / "c.txt"
    path.write_bytes(text.encode("utf-8"))
    prepared, cached = prepare(str(path), val_fraction=0.2)
    assert not cached
    assert len(prepared.train) + len(prepared.val) == len(text)
    assert len(prepared.val) == round(len(text) * 0.2)
    assert prepared.vocab.decode(np.concatenate([prepared.train, prepared.val])) == text
    assert prepared.train.dtype == np.uint8  # < 256 distinct characters
    assert isinstance(prepared.train, np.memmap)
    again, cached = prepare(str(path), val_fraction=0.2)
    assert cached and again.directory == prepared.directory
    assert prepared.stats["most_common"][0][0] == " " or prepared.stats["most_common"][0][1] > 0


def test_builtin_corpus_is_real_text():
    text = builtin_text()
    assert len(text) > 100_000
    assert "the" in text and "\n" in text


def test_invalid_utf8_names_the_byte_offset(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"hello \xff world")
    with pytest.raises(CorpusError, match="offset 6"):
        read_text(str(path))
    assert read_text(str(path), errors="replace") == "hello \ufffd world"


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
