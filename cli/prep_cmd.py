"""`charrnn prep FILE`: encode a corpus and show its statistics."""

from typing import Annotated

import typer

from charrnn.config import TrainConfig, check_text_options

from . import console
from .options import config_help, flag_errors, require_nonempty, with_default

CorpusArgument = Annotated[
    list[str] | None,
    typer.Argument(
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


@flag_errors
def prep(
    corpus: CorpusArgument = None,
    val_fraction: ValFractionOption = None,
    encoding: EncodingOption = "utf-8",
    errors: ErrorsOption = "strict",
    min_count: MinCountOption = 1,
) -> None:
    """Prepare a corpus: vocabulary, encoded train/validation splits (cached), statistics."""
    require_nonempty("FILE", *(corpus or []))
    from charrnn.corpus import prepare

    check_text_options(encoding, errors)
    fraction = TrainConfig(val_fraction=val_fraction).val_fraction if val_fraction is not None else 0.1
    prepared, cached = prepare(
        corpus or ["pydoc"],
        val_fraction=fraction,
        encoding=encoding,
        errors=errors,
        warn=lambda text: console.info(f"charrnn: warning: {text}"),
        min_count=min_count,
    )
    show_stats(prepared.stats, prepared.directory, cached)


def show_stats(stats: dict, directory, cached: bool) -> None:
    common = "  ".join(f"{char!r}:{count}" for char, count in stats["most_common"])
    documents = f" in {stats['documents']:,} documents" if stats.get("documents") else ""
    console.info(
        f"corpus {stats['source']}: {stats['characters']:,} characters{documents}, vocabulary {stats['vocab_size']:,} "
        f"({stats['dtype']}); train {stats['train_characters']:,}, validation {stats['val_characters']:,}"
        f"{' (cached)' if cached else ''}\n"
        + (
            f"  --min-count {stats['min_count']}: {stats['rare_characters']:,} rare characters "
            f"({stats['rare_occurrences']:,} occurrences) share the unknown symbol\n"
            if stats.get("min_count", 1) > 1
            else ""
        )
        + f"  most frequent: {common}\n"
        f"  prepared in {directory}"
    )
