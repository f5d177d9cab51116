"""Small helpers shared by the commands' option parsing."""

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from charrnn.config import TrainConfig
from charrnn.errors import UsageError


def default_of(config_class: type, name: str) -> Any:
    """The dataclass default of `name`, for help texts: options default to None so that the
    commands can tell 'not given' from 'given the default value' (which matters for --resume)."""
    return next(f.default for f in dataclasses.fields(config_class) if f.name == name)


def with_default(text: str, default: Any) -> str:
    """`text` followed by "[default: DEFAULT]", for options that default to None (see `default_of`),
    whose default typer cannot show."""
    return f"{text} [default: {default}]"


def config_help(text: str, config_class: type, name: str) -> str:
    """`with_default` for an option that sets configuration field `name`."""
    return with_default(text, default_of(config_class, name))


def budget_text(train: dict[str, Any]) -> str:
    """A run's budgets as `train` and `info` name them ("600 steps, 300s"); empty without one."""
    return ", ".join(
        part
        for part in (
            f"{train['steps']} steps" if train.get("steps") else "",
            f"{train['epochs']:g} epochs" if train.get("epochs") else "",
            f"{train['time_seconds']:g}s" if train.get("time_seconds") else "",
        )
        if part
    )


def regularisation_text(model: dict[str, Any], train: dict[str, Any]) -> tuple[str, str]:
    """What `train` and `info` add to their model and training lines for the settings a run may leave
    off (recurrent dropout, weight drop; weight decay, the weights' average), each ", ..." or empty.
    Settings missing from an older run's config read as off."""
    model_part = (f", recurrent dropout {model['recurrent_dropout']:g}" if model.get("recurrent_dropout") else "") + (
        f", weight drop {model['weight_drop']:g}" if model.get("weight_drop") else ""
    )
    train_part = (f", weight decay {train['weight_decay']:g}" if train.get("weight_decay") else "") + (
        f", weights averaged (decay {train['ema']:g})" if train.get("ema") else ""
    )
    return model_part, train_part


def nonempty_path(name: str) -> Callable[[str], Path]:
    """Typer's `parser` for a path option or argument called `name`: an empty value is a usage
    error, not the current directory that ``Path("")`` would make of it (``--out ''`` once trained
    into ``.``)."""

    def parse(value: str) -> Path:
        require_nonempty(name, value)
        return Path(value)

    return parse


def require_nonempty(name: str, *values: str | None) -> None:
    """Refuse an empty string given for a path (`name`: its option or argument, for the message)."""
    if any(value == "" for value in values):
        raise UsageError(f"{name} must not be empty")


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


# Settings whose option is not simply --<name with dashes>.
FLAGS = {
    "hidden_size": "--hidden",
    "embed_size": "--embed",
    "learning_rate": "--lr",
    "warmup_steps": "--warmup",
    "time_seconds": "--time",
    "temperature": "--temp",
    "directory": "--out",
    "parent": "--init-from",
    "slots": "--max-streams",
}


def flag(name: str) -> str:
    """The command-line option that sets configuration field `name`."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def paragraphs(text: str) -> str:
    """A docstring for typer's help: each paragraph on one line (it keeps single line breaks)."""
    import inspect

    return "\n\n".join(" ".join(p.split("\n")) for p in inspect.cleandoc(text).split("\n\n"))


# The RUN argument of the commands that read one run (`info`, `sample`).
RunArgument = Annotated[
    Path | None,
    typer.Argument(
        parser=nonempty_path("RUN"),
        metavar="RUN",
        help=with_default("Run directory.", "the run trained most recently under ./runs"),
        show_default=False,
    ),
]

# Options that `prep` and `train` share.
CorpusArgument = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="FILE",
        help=with_default(
            "Text file (UTF-8), '-' for standard input, or 'pydoc' for the built-in corpus; a folder or "
            "several files are documents.",
            "pydoc",
        ),
        show_default=False,
    ),
]
EncodingOption = Annotated[str, typer.Option("--encoding", help="Text encoding of the corpus file.")]
ErrorsOption = Annotated[
    str, typer.Option("--errors", help="What to do with undecodable bytes: strict (stop), replace or ignore.")
]
ValFractionOption = Annotated[
    float | None,
    typer.Option(
        "--val-fraction",
        help=config_help("Fraction at the end held out for validation.", TrainConfig, "val_fraction"),
    ),
]
MinCountOption = Annotated[
    int,
    typer.Option(
        "--min-count",
        min=1,
        help="Characters seen fewer times share one unknown symbol (an extra vocabulary entry, never "
        "sampled): keeps a large alphabet's rare characters out of the softmax.",
    ),
]
