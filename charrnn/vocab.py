"""The character vocabulary: every distinct Unicode code point of the corpus, sorted by code point."""

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import numpy as np

from charrnn.errors import VocabularyError


def smallest_uint_dtype(size: int) -> np.dtype:
    """The narrowest unsigned dtype that holds ids 0..size-1 (uint8 for English, uint16 for Chinese)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise VocabularyError(f"a vocabulary of {size} characters is too large")


@dataclass(frozen=True)
class Vocabulary:
    """Maps characters to ids and back.

    Ids follow code-point order, so the same set of characters always gives the same ids,
    whatever order they appear in; a vocabulary `extended` for a model continued on new text keeps
    its old ids and appends the new characters (in code-point order among themselves).
    ``"\\r\\n"`` stays two characters: text round-trips byte for byte.
    """

    chars: tuple[str, ...]
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {char: i for i, char in enumerate(self.chars)})
        if len(self.index) != len(self.chars) or any(len(c) != 1 for c in self.chars):
            raise VocabularyError("a vocabulary must list distinct single characters")

    @classmethod
    def from_text(cls, text: str) -> Self:
        return cls(tuple(sorted(set(text))))

    def extended(self, chars: Iterable[str]) -> Self:
        """This vocabulary with the characters of `chars` it lacks appended: old ids are unchanged."""
        new = sorted(set(chars) - set(self.chars))
        return type(self)(self.chars + tuple(new))

    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, char: str) -> bool:
        return char in self.index

    @property
    def dtype(self) -> np.dtype:
        return smallest_uint_dtype(len(self.chars))

    def missing(self, text: str) -> list[str]:
        """Characters of `text` that are not in the vocabulary, in order of first appearance."""
        return list(dict.fromkeys(c for c in text if c not in self.index))

    def encode(self, text: str) -> np.ndarray:
        """Ids of `text`, in the smallest dtype; raises VocabularyError naming unknown characters."""
        if unknown := self.missing(text):
            shown = ", ".join(repr(c) for c in unknown[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise VocabularyError(f"characters not in the vocabulary: {shown}{more}")
        # Fast path: a lookup table over code points (vectorised), falling back to a dict for huge code points.
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        if len(codes) and int(codes.max()) < 1 << 18:
            table = np.zeros(int(codes.max()) + 1, dtype=self.dtype)
            for char, i in self.index.items():
                if ord(char) < len(table):
                    table[ord(char)] = i
            return table[codes]
        return np.fromiter((self.index[c] for c in text), dtype=self.dtype, count=len(text))

    def decode(self, ids: Iterable[int]) -> str:
        chars = self.chars
        return "".join(chars[int(i)] for i in ids)

    def to_json(self) -> str:
        return json.dumps({"chars": list(self.chars)}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Self:
        return cls(tuple(json.loads(text)["chars"]))

    def save(self, path: Path) -> None:
        path.write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Self:
        return cls.from_json(path.read_text(encoding="utf-8"))
