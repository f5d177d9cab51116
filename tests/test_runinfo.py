"""`charrnn info` and `charrnn runs`: what they read from a run, and how they print it."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import charrnn_in_process

from charrnn.config import ModelConfig, TrainConfig
from charrnn.report import describe, list_runs
from charrnn.runs import Run
from charrnn.vocab import Vocabulary


def charrnn(*args, cwd=None):
    """`info` and `runs` read files only: in this process (see conftest.charrnn_in_process)."""
    return charrnn_in_process(*args, cwd=cwd, check=False)


def fake_run(
    directory: Path,
    *,
    hidden: int = 32,
    losses=(2.0, 1.5, 1.7),
    section: dict | None = None,
    recurrent_dropout: float = 0.0,
    weight_drop: float = 0.0,
    **train: float,
) -> Run:
    """A run directory as training writes it, without training: config, vocabulary, metrics, checkpoints."""
    run = Run(directory)
    directory.mkdir(parents=True)
    model = ModelConfig(
        vocab_size=3,
        cell="gru",
        layers=1,
        hidden_size=hidden,
        embed_size=8,
        recurrent_dropout=recurrent_dropout,
        weight_drop=weight_drop,
    )
    run.write_config(
        model,
        TrainConfig(batch_size=4, seq_len=16, steps=30, **train),
        {"source": "x.txt", "sha256": "0" * 64, "characters": 99},
        section,
    )
    Vocabulary(("\n", "a", "b")).save(run.vocab_path)
    for i, loss in enumerate(losses, start=1):
        run.append_metrics(
            {"step": 10 * i, "epoch": 0.5 * i, "train_loss": loss + 0.1, "val_loss": loss, "elapsed": 3.0 * i}
        )
        (run.checkpoints_dir / str(10 * i)).mkdir(parents=True)
    return run


def test_describe_reads_an_old_run_and_derives_what_it_can(tmp_path):
    facts = describe(fake_run(tmp_path / "old"))  # written before the "run" section existed
    assert facts["device"] is None and facts["parent"] is None and facts["platform"] is None
    assert facts["precision"] == "float32"  # the model's dtype, always recorded
    assert facts["steps"] == 30 and facts["epochs"] == 1.5
    assert facts["chars_seen"] == 30 * 4 * 16  # derived exactly: each step reads batch × seq_len
    assert facts["best_val_loss"] == 1.5 and facts["best_step"] == 20 and facts["last_val_loss"] == 1.7
    assert facts["training_seconds"] == 9.0
    assert (
        facts["parameters"]
        == ModelConfig(vocab_size=3, cell="gru", layers=1, hidden_size=32, embed_size=8).parameter_count()
    )
    assert facts["vocab_preview"] == "\\nab"
    assert [(c["step"], c["val_loss"], c["best"]) for c in facts["checkpoints"]] == [
        (10, 2.0, False),
        (20, 1.5, True),
        (30, 1.7, False),
    ]


def test_describe_shows_the_run_section(tmp_path):
    section = {"platform": "cpu", "device": "cpu", "precision": "bfloat16", "parent": "/x/runs/base"}
    facts = describe(fake_run(tmp_path / "new", section=section))
    assert (facts["device"], facts["platform"], facts["precision"], facts["parent"]) == (
        "cpu",
        "cpu",
        "bfloat16",
        "/x/runs/base",
    )


def test_list_runs_newest_first_and_skips_damaged_with_a_warning(tmp_path):
    root = tmp_path / "runs"
    older, newer = fake_run(root / "a", hidden=16), fake_run(root / "b", hidden=64)
    os.utime(older.metrics_path, (1, 1))
    os.utime(older.config_path, (1, 1))
    os.utime(older.checkpoints_dir, (1, 1))
    (root / "broken").mkdir()
    (root / "broken" / "config.json").write_text("{")
    rows, warnings = list_runs(root)
    assert [r["name"] for r in rows] == ["b", "a"]
    assert rows[0]["size"] == "1×64" and rows[0]["best_val_loss"] == 1.5 and rows[0]["steps"] == 30
    assert len(warnings) == 1 and "broken" in warnings[0]
    del newer


def test_info_and_runs_cli_plain_and_json(tmp_path):
    fake_run(tmp_path / "runs" / "one")
    result = charrnn("info", "runs/one", cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == ""

    assert "1×32 GRU" in result.stdout and "device           unknown" in result.stdout
    assert "1.5000 nats/char (2.1640 bits/char) at step 20" in result.stdout
    assert "lr 0.003, weight decay 0.1, seed 0; budget 30 steps" in result.stdout  # no average, no recurrent dropout
    assert "recurrent" not in result.stdout

    data = json.loads(charrnn("info", "runs/one", "--json", cwd=tmp_path).stdout)
    assert data["best_step"] == 20 and data["device"] is None
    listing = charrnn("runs", cwd=tmp_path)
    assert listing.stdout.splitlines()[0].split() == [
        "name",
        "cell",
        "size",
        "params",
        "steps",
        "best",
        "val",
        "modified",
    ]
    assert listing.stdout.splitlines()[1].split()[:6] == ["one", "gru", "1×32", "4,155", "30", "1.5000"]
    assert json.loads(charrnn("runs", "--json", cwd=tmp_path).stdout)[0]["name"] == "one"


def test_info_of_a_non_run_is_one_line(tmp_path):
    (tmp_path / "norun").mkdir()
    result = charrnn("info", "norun", cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == "charrnn: error: norun is not a charrnn run (no config.json)\n"


def test_info_shows_the_regularisation_a_run_trained_with(tmp_path):
    fake_run(tmp_path / "runs" / "reg", recurrent_dropout=0.1, weight_drop=0.2, weight_decay=0.0, ema=0.999)
    out = charrnn("info", "runs/reg", cwd=tmp_path).stdout
    assert "dropout 0, recurrent dropout 0.1, weight drop 0.2" in out
    assert "lr 0.003, weights averaged (decay 0.999), seed 0" in out and "weight decay" not in out


def test_info_and_runs_import_no_jax(tmp_path):
    """They read files: a hundred runs are listed at once (the parameter count comes from the cell's
    shapes in charrnn.config, not from tracing the model)."""
    fake_run(tmp_path / "runs" / "one")
    code = (
        "import sys\n"
        "from charrnn.cli.main import main\n"
        "for args in (['info', 'runs/one'], ['info', 'runs/one', '--json'], ['runs'], ['runs', '--json']):\n"
        "    sys.argv = ['charrnn', *args]\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit as done:\n"
        "        assert not done.code, args\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] in ('jax', 'jaxlib', 'flax')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"
    assert "4,155" in result.stdout  # the count as before, without JAX
