"""Continuing a trained model on new text: `train NEW.txt --init-from RUN`."""

import json

import jax
import numpy as np
from conftest import charrnn_in_process, periodic_text
from test_cli import TINY

from charrnn.config import ModelConfig, TrainConfig
from charrnn.corpus import prepare
from charrnn.model import init_params
from charrnn.transfer import extend_params
from charrnn.vocab import Vocabulary


def test_extended_vocabulary_keeps_old_ids_and_appends_new_characters():
    old = Vocabulary.from_text("hello world")
    new = old.extended("Hello, wörld!")
    assert new.chars[: len(old)] == old.chars
    assert new.chars[len(old) :] == ("!", ",", "H", "ö")
    assert old.extended("hello") == old


def test_prepare_encodes_with_the_base_vocabulary(tmp_path):
    (tmp_path / "new.txt").write_text("ab€" * 100)
    base = Vocabulary(("z", "b", "a"))  # not code-point order: ids must be taken from it, not recomputed
    prepared, _ = prepare(str(tmp_path / "new.txt"), base_vocab=base)
    assert prepared.vocab.chars == ("z", "b", "a", "€")
    assert prepared.vocab.decode(prepared.train[:6]) == "ab€ab€"
    assert list(prepared.train[:3]) == [2, 1, 3]
    own, _ = prepare(str(tmp_path / "new.txt"))  # the text's own vocabulary: a different cache entry
    assert own.vocab.chars == ("a", "b", "€") and own.directory != prepared.directory


def test_extend_params_keeps_old_rows_exactly_and_new_rows_fresh():
    parent_config = ModelConfig(vocab_size=5, cell="gru", layers=2, hidden_size=16, embed_size=8)
    child_config = ModelConfig(vocab_size=8, cell="gru", layers=2, hidden_size=16, embed_size=8)
    parent = init_params(parent_config, jax.random.key(1))
    fresh = init_params(child_config, jax.random.key(2))
    child = extend_params(parent, fresh, 5)
    assert jax.tree.map(np.shape, child) == jax.tree.map(np.shape, fresh)
    np.testing.assert_array_equal(child["embed"]["embedding"][:5], parent["embed"]["embedding"])
    np.testing.assert_array_equal(child["embed"]["embedding"][5:], fresh["embed"]["embedding"][5:])
    np.testing.assert_array_equal(child["head_kernel"][:, :5], parent["head_kernel"])
    np.testing.assert_array_equal(child["head_kernel"][:, 5:], fresh["head_kernel"][:, 5:])
    np.testing.assert_array_equal(child["head_bias"][:5], parent["head_bias"])
    np.testing.assert_array_equal(child["head_bias"][5:], fresh["head_bias"][5:])
    for name in ("layer0", "layer1"):
        for key, value in parent[name].items():
            np.testing.assert_array_equal(child[name][key], value)


def test_init_from_extends_the_vocabulary_records_the_parent_and_learns(tmp_path):
    (tmp_path / "old.txt").write_text(periodic_text(3000))
    (tmp_path / "new.txt").write_text(("hello wörld! " * 300)[:3000])
    steps = ["--lr", "0.01", "--eval-every", "40"]
    charrnn_in_process("train", "old.txt", *TINY, "--steps", "120", *steps, cwd=tmp_path)
    # Model options come from the parent (TINY's sizes are not repeated here).
    result = charrnn_in_process(
        "train", "new.txt", "--init-from", "runs/old", "-b", "4", "-t", "16", "--steps", "120", *steps, cwd=tmp_path
    )
    assert "2 new characters extend its vocabulary of 9" in result.stderr
    child = tmp_path / "runs" / "new"
    config = json.loads((child / "config.json").read_text())
    assert config["run"]["parent"] == str(tmp_path / "runs" / "old")
    assert config["model"]["hidden_size"] == 32 and config["model"]["embed_size"] == 8
    old_vocab = json.loads((tmp_path / "runs" / "old" / "vocab.json").read_text())["chars"]
    assert json.loads((child / "vocab.json").read_text())["chars"] == [*old_vocab, "!", "ö"]
    losses = [json.loads(line)["val_loss"] for line in (child / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] and losses[-1] < 0.5  # it learns the new text, new characters included
    sample = charrnn_in_process(
        "sample", "runs/new", "--temp", "0", "--prime", "hello w", "-n", "20", cwd=tmp_path
    ).stdout
    assert sample.startswith("hello wörld! hello")
    # --resume keeps its meaning: the same child run, with its own (extended) vocabulary.
    resumed = charrnn_in_process("train", "--resume", "runs/new", "--steps", "130", cwd=tmp_path)
    assert "stopped (steps) at step 130" in resumed.stderr
    assert json.loads((child / "metrics.jsonl").read_text().splitlines()[-1])["val_loss"] < 0.5


def test_init_from_bad_inputs_are_one_line(tmp_path):
    (tmp_path / "new.txt").write_text(periodic_text(3000))
    (tmp_path / "runs" / "parent").mkdir(parents=True)
    config = {
        "format": 1,
        "model": ModelConfig(vocab_size=9, cell="lstm", layers=1, hidden_size=32).to_dict(),
        "train": TrainConfig().to_dict(),
        "corpus": {"source": "old.txt", "sha256": "0" * 64, "characters": 100},
    }
    (tmp_path / "runs" / "parent" / "config.json").write_text(json.dumps(config))
    (tmp_path / "runs" / "parent" / "vocab.json").write_text(Vocabulary.from_text("helo wrd,").to_json())
    cases = [
        (["--init-from", "nowhere"], 1, "charrnn: error: --init-from nowhere: not a charrnn run (no config.json)"),
        (
            ["--init-from", "runs/parent", "--cell", "gru", "--hidden", "64"],
            2,
            "charrnn: error: --cell gru (the parent has lstm), --hidden 64 (the parent has 32): contradicts the model "
            "of --init-from runs/parent; drop it to use the parent's",
        ),
        (
            ["--init-from", "runs/parent", "--resume", "runs/parent"],
            2,
            "charrnn: error: give --resume (continue the same run) or --init-from (a new run from its weights), "
            "not both",
        ),
        (
            ["--init-from", "runs/parent", "--steps", "5"],
            1,
            "charrnn: error: runs/parent has no checkpoint yet; let training reach its first evaluation",
        ),
    ]
    for args, code, message in cases:
        result = charrnn_in_process("train", "new.txt", *args, check=False, cwd=tmp_path)
        assert (result.returncode, result.stderr.splitlines()[-1]) == (code, message)
        assert "Traceback" not in result.stderr
