"""Small helpers shared by the commands' option parsing."""

import dataclasses
from typing import Any


def default_of(config_class: type, name: str) -> Any:
    """The dataclass default of `name`, for help texts: options default to None so that the
    commands can tell 'not given' from 'given the default value' (which matters for --resume)."""
    return next(f.default for f in dataclasses.fields(config_class) if f.name == name)


def given(**values: Any) -> dict[str, Any]:
    """The options the user actually gave."""
    return {name: value for name, value in values.items() if value is not None}


ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescape(text: str) -> str:
    """Backslash escapes typed on a command line: ``\\n``, ``\\t``, ``\\r`` and ``\\\\``; any other
    backslash is kept as it is (so ``C:\\dir`` stays intact)."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in ESCAPES:
            out.append(ESCAPES[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)
