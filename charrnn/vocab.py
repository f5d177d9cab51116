"""The character vocabulary: every distinct Unicode code point of the corpus, sorted by code point.

With ``--min-count N`` the characters seen fewer than N times share one extra entry, the unknown
symbol (the last id): a large CJK corpus's thousands of one-off characters would otherwise each
cost a row of the embedding and a column of the softmax.
"""

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
    `unknown`, when set, is the character that stands for every rare one (the last of `chars`):
    encoding maps characters outside the vocabulary to it, decoding shows it as itself.
    """

    chars: tuple[str, ...]
    unknown: str | None = None
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {char: i for i, char in enumerate(self.chars)})
        if len(self.index) != len(self.chars) or any(len(c) != 1 for c in self.chars):
            raise VocabularyError("a vocabulary must list distinct single characters")
        if self.unknown is not None and (not self.chars or self.chars[-1] != self.unknown):
            raise VocabularyError("the unknown symbol must be the vocabulary's last entry")

    @classmethod
    def with_unknown(cls, known: Iterable[str]) -> Self:
        """`known` characters plus one unknown symbol: U+FFFD (the replacement character), or a
        private-use character when U+FFFD is itself one of the known ones."""
        known = tuple(known)
        taken = set(known)
        symbol = next(c for c in ("\ufffd", *map(chr, range(0xE000, 0xF900))) if c not in taken)
        return cls((*known, symbol), unknown=symbol)

    @property
    def unknown_id(self) -> int | None:
        return None if self.unknown is None else len(self.chars) - 1

    @classmethod
    def from_text(cls, text: str) -> Self:
        return cls(tuple(sorted(set(text))))

    def extended(self, chars: Iterable[str]) -> Self:
        """This vocabulary with the characters of `chars` it lacks appended: old ids are unchanged."""
        if self.unknown is not None:
            raise VocabularyError(
                "a model trained with {min_count} (an unknown symbol) cannot take new characters",
                settings=("min_count",),
            )
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
        """Characters of `text` that are not in the vocabulary, in order of first appearance
        (none when there is an unknown symbol: every character then has an id)."""
        if self.unknown is not None:
            return []
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
            table = np.full(int(codes.max()) + 1, self.unknown_id or 0, dtype=self.dtype)
            for char, i in self.index.items():
                if ord(char) < len(table):
                    table[ord(char)] = i
            return table[codes]
        return np.fromiter((self.index.get(c, self.unknown_id) for c in text), dtype=self.dtype, count=len(text))

    def decode(self, ids: Iterable[int]) -> str:
        chars = self.chars
        return "".join(chars[int(i)] for i in ids)

    def to_json(self) -> str:
        record = {"chars": list(self.chars)} | ({"unknown": self.unknown} if self.unknown is not None else {})
        return json.dumps(record, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Self:
        record = json.loads(text)
        return cls(tuple(record["chars"]), unknown=record.get("unknown"))

    def save(self, path: Path) -> None:
        path.write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Self:
        return cls.from_json(path.read_text(encoding="utf-8"))
