"""Many documents: a folder or several files, joined with U+001E, the state reset between them."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import charrnn_in_process
from test_cli import TINY

import charrnn
from charrnn.cli.options import flag
from charrnn.config import ModelConfig
from charrnn.corpus import BOUNDARY, boundary_id, prepare
from charrnn.errors import CorpusError
from charrnn.kinds import cross_entropy
from charrnn.model import CharRNN, init_params, initial_carry
from charrnn.vocab import Vocabulary


def text_of(prepared) -> str:
    return prepared.vocab.decode(np.concatenate([prepared.train, prepared.val]))


def write(folder, files: dict[str, bytes]):
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def test_a_folder_is_its_text_files_in_sorted_order_each_followed_by_the_boundary(tmp_path):
    write(
        tmp_path / "docs",
        {
            "b.txt": b"second\n" * 20,
            "a/z.py": b"first\n" * 20,
            "c.bin": b"\x00\x01binary",
            "d.txt": b"caf\xe9",  # latin-1, not UTF-8
            ".hidden/x.txt": b"never read",
            "e.txt": ("has a " + BOUNDARY + " inside").encode(),
        },
    )
    warnings = []
    prepared, cached = prepare(str(tmp_path / "docs"), warn=warnings.append)
    assert not cached
    assert text_of(prepared) == "first\n" * 20 + BOUNDARY + "second\n" * 20 + BOUNDARY
    assert prepared.stats["documents"] == 2 and boundary_id(prepared) == prepared.vocab.index[BOUNDARY]
    docs = tmp_path / "docs"
    assert [warning.worded(flag) for warning in warnings] == [  # as the CLI prints them
        f"skipped {docs}/c.bin: looks binary (NUL byte at offset 0)",
        f"skipped {docs}/d.txt: is not valid utf-8 (bad byte at offset 3); try --encoding or --errors replace",
        f"skipped {docs}/e.txt: contains U+001E, the character that separates documents",
    ]
    again, cached = prepare(str(tmp_path / "docs"))
    assert cached and again.directory == prepared.directory


def test_the_cache_key_covers_names_order_and_contents(tmp_path):
    write(tmp_path, {"one.txt": b"alpha " * 50, "two.txt": b"beta " * 50})
    one, two = str(tmp_path / "one.txt"), str(tmp_path / "two.txt")
    keys = {prepare([one, two])[0].directory}
    assert text_of(prepare([two, one])[0]).startswith("beta")
    keys.add(prepare([two, one])[0].directory)
    (tmp_path / "three.txt").write_bytes(b"beta " * 50)
    keys.add(prepare([one, str(tmp_path / "three.txt")])[0].directory)  # same text, another name
    (tmp_path / "two.txt").write_bytes(b"beta " * 49 + b"beta!")
    keys.add(prepare([one, two])[0].directory)
    assert len(keys) == 4


def test_bad_documents(tmp_path):
    write(tmp_path, {"empty/.keep": b"", "bin/x.bin": b"\x00" * 10, "ok.txt": b"fine " * 100, "b.bin": b"\x00ab"})
    with pytest.raises(CorpusError, match=r"^folder .*empty has no text files$"):
        prepare(str(tmp_path / "empty"))
    with pytest.raises(CorpusError, match=r"^folder .*bin has no text files$"):
        prepare(str(tmp_path / "bin"))
    with pytest.raises(CorpusError, match=r"looks binary"):  # a file named explicitly is not skipped
        prepare([str(tmp_path / "ok.txt"), str(tmp_path / "b.bin")])


def losses_with_prefix(params, model, prefix: str, document: str, vocab: Vocabulary, carry, resets: bool):
    ids = jnp.asarray(vocab.encode(prefix + BOUNDARY + document).astype(np.int32))[None]
    inputs, targets = ids[:, :-1], ids[:, 1:]
    sep = vocab.index[BOUNDARY]
    logits, _ = model.apply({"params": params}, inputs, carry, resets=(inputs == sep) if resets else None)
    return np.asarray(cross_entropy(logits, targets)[0, len(prefix) :])  # from the boundary on


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_a_documents_loss_does_not_depend_on_what_preceded_it(cell):
    vocab = Vocabulary.from_text("abcdefgh xyz." + BOUNDARY)
    config = ModelConfig(vocab_size=len(vocab), cell=cell, layers=2, hidden_size=16, embed_size=8)
    model, params = CharRNN(config), init_params(config, jax.random.key(0))
    zero = initial_carry(config, 1)
    noisy = jax.tree.map(lambda c: jax.random.normal(jax.random.key(1), c.shape), zero)
    document = "abc defg hh."
    a = losses_with_prefix(params, model, "xyz xyz", document, vocab, zero, True)
    b = losses_with_prefix(params, model, "hgfedcb", document, vocab, noisy, True)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    c = losses_with_prefix(params, model, "hgfedcb", document, vocab, noisy, False)
    assert np.abs(a - c).max() > 1e-3  # without the reset, the past leaks in


def test_train_on_a_folder_and_sample_stops_at_the_document_end(tmp_path):
    write(tmp_path / "docs", {f"{i:03}.txt": b"hello world, hello." for i in range(60)})
    write(tmp_path / "docs", {"zz.bin": b"\x00\x00"})
    result = charrnn_in_process(
        "train", "docs", *TINY, "--steps", "150", "--lr", "0.01", "--eval-every", "50", cwd=tmp_path
    )
    assert f"charrnn: warning: skipped docs{'/'}zz.bin: looks binary" in result.stderr
    assert "in 60 documents" in result.stderr
    config = json.loads((tmp_path / "runs" / "docs" / "config.json").read_text())
    assert config["corpus"]["boundary"] == BOUNDARY and config["corpus"]["documents"] == 60
    losses = [json.loads(line)["val_loss"] for line in (tmp_path / "runs" / "docs" / "metrics.jsonl").open()]
    assert losses[-1] < 0.3
    sample = charrnn_in_process("sample", "runs/docs", "--temp", "0", "-n", "100", cwd=tmp_path)
    assert sample.stdout == "hello world, hello."  # a whole document, from its start; the boundary not printed
    through = charrnn_in_process("sample", "runs/docs", "--temp", "0", "-n", "40", "--no-boundary-stop", cwd=tmp_path)
    assert through.stdout == ("hello world, hello." + BOUNDARY) * 2
    # The API and the command are one code path: the same samples for the same seed, boundary and all.
    model = charrnn.load(tmp_path / "runs" / "docs")
    for options, flags in (({}, []), ({"stop_at_boundary": False}, ["--no-boundary-stop"])):
        command = ["sample", "runs/docs", "--temp", "0.9", "--seed", "5", "-n", "80", "--num", "3", "--separator", "|"]
        printed = charrnn_in_process(*command, *flags, cwd=tmp_path).stdout
        assert printed == "|".join(model.sample(80, temperature=0.9, seed=5, num=3, **options))
        assert (BOUNDARY in printed) == bool(options)
    resumed = charrnn_in_process("train", "--resume", "runs/docs", "--steps", "160", cwd=tmp_path)
    assert "stopped (steps) at step 160" in resumed.stderr


def test_a_folder_with_no_text_files_is_one_line(tmp_path):
    write(tmp_path / "bin", {"a.bin": b"\x00\x01"})
    result = charrnn_in_process("train", "bin", check=False, cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines()[-1] == "charrnn: error: folder bin has no text files"
    assert "skipped bin/a.bin: looks binary" in result.stderr
