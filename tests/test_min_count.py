"""--min-count: rare characters share one unknown symbol, which sampling never prints."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from charrnn.config import ModelConfig, SampleOptions
from charrnn.corpus import prepare
from charrnn.model import init_params
from charrnn.sampling import sample_stream
from charrnn.vocab import Vocabulary

CHARRNN = [sys.executable, "-m", "charrnn.cli.main"]


def test_rare_characters_share_the_unknown_symbol(tmp_path):
    text = "abab" * 50 + "xyz" + "ab\n" * 30 + "x\ufffd\ufffd"  # x, U+FFFD: twice; y, z: once
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    plain, _ = prepare(str(path), val_fraction=0.2)
    rare, cached = prepare(str(path), val_fraction=0.2, min_count=2)
    assert not cached and rare.directory != plain.directory  # min-count is part of the cache key
    assert len(plain.vocab) == 7 and plain.vocab.unknown is None
    # U+FFFD is in the text, so the unknown symbol is the first private-use character.
    assert rare.vocab.chars == ("\n", "a", "b", "x", "\ufffd", "\ue000") and rare.vocab.unknown == "\ue000"
    assert rare.stats["rare_characters"] == 2 and rare.stats["rare_occurrences"] == 2
    ids = np.concatenate([rare.train, rare.val])
    expected = ["\ue000" if c in "yz" else c for c in text]
    assert rare.vocab.decode(ids) == "".join(expected)
    assert prepare(str(path), val_fraction=0.2, min_count=2)[1]  # cached under its own key
    assert rare.vocab.encode("a\u4e00b").tolist() == [1, 5, 2]  # unseen characters too
    assert Vocabulary.from_json(rare.vocab.to_json()) == rare.vocab


def test_sampling_never_draws_the_unknown_symbol():
    vocab = Vocabulary.with_unknown("ab\n")
    config = ModelConfig(vocab_size=len(vocab), layers=1, hidden_size=8, embed_size=4)
    params = init_params(config, jax.random.key(0))
    # A model that all but always predicts the unknown symbol: masking alone keeps it out.
    params = params | {"head_bias": jnp.zeros(len(vocab)).at[vocab.unknown_id].set(50.0)}
    for options in (SampleOptions(temperature=1.0), SampleOptions(temperature=0.0)):
        text = "".join(piece[0] for piece in sample_stream(params, config, vocab, length=200, options=options))
        assert len(text) == 200 and vocab.unknown not in text
    unmasked = Vocabulary(vocab.chars)  # the same characters, the last an ordinary one
    text = "".join(piece[0] for piece in sample_stream(params, config, unmasked, length=50))
    assert text.count(vocab.unknown) > 40  # so the check above can fail


def test_min_count_below_one_is_a_usage_error(tmp_path):
    (tmp_path / "c.txt").write_text("hello world\n" * 50)
    result = subprocess.run(
        [*CHARRNN, "prep", str(tmp_path / "c.txt"), "--min-count", "0"], capture_output=True, text=True
    )
    assert result.returncode == 2 and result.stdout == ""
    assert "--min-count" in result.stderr
