import numpy as np
import pytest

from charrnn.errors import VocabularyError
from charrnn.vocab import Vocabulary, smallest_uint_dtype

MIXED = "Hello, world!\r\nÇa va? 床前明月光，疑是地上霜。\r\n🙂👍🏽 tab\there\n\x0b end"


def test_round_trip_mixed_scripts_exactly():
    vocab = Vocabulary.from_text(MIXED)
    ids = vocab.encode(MIXED)
    assert vocab.decode(ids) == MIXED
    assert "\r" in vocab and "\n" in vocab  # \r\n stays two characters


def test_ids_follow_code_point_order_whatever_the_text_order():
    a = Vocabulary.from_text("cab")
    b = Vocabulary.from_text("bca")
    assert a == b
    assert a.chars == ("a", "b", "c")
    assert list(a.encode("cab")) == [2, 0, 1]


def test_json_round_trip_keeps_every_character():
    vocab = Vocabulary.from_text(MIXED)
    again = Vocabulary.from_json(vocab.to_json())
    assert again.chars == vocab.chars
    assert again.decode(vocab.encode(MIXED)) == MIXED


def test_thousands_of_chinese_characters_use_uint16():
    text = "".join(chr(0x4E00 + i) for i in range(5000)) + "，。\n"
    vocab = Vocabulary.from_text(text)
    ids = vocab.encode(text)
    assert ids.dtype == np.uint16
    assert vocab.decode(ids) == text


@pytest.mark.parametrize(("size", "dtype"), [(1, np.uint8), (256, np.uint8), (257, np.uint16), (65537, np.uint32)])
def test_smallest_dtype(size, dtype):
    assert smallest_uint_dtype(size) == np.dtype(dtype)


def test_unknown_characters_are_named():
    vocab = Vocabulary.from_text("abc")
    with pytest.raises(VocabularyError, match="'z'"):
        vocab.encode("abz")
    assert vocab.missing("xaxy") == ["x", "y"]
