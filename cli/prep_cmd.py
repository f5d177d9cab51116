"""`charrnn prep FILE`: encode a corpus and show its statistics."""

from charrnn.config import TrainConfig, check_text_options

from . import console
from .console import show_stats
from .options import (
    CorpusArgument,
    EncodingOption,
    ErrorsOption,
    MinCountOption,
    ValFractionOption,
    require_nonempty,
)


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
        warn=console.warn,
        min_count=min_count,
    )
    show_stats(prepared.stats, prepared.directory, cached)
