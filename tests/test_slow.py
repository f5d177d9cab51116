"""Long end-to-end runs: excluded by default, run with `pytest -m slow`."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_builtin_corpus_trains_to_readable_text(tmp_path):
    command = [sys.executable, "-m", "charrnn.cli.main"]
    subprocess.run([*command, "train", "--time", "2m", "--hidden", "256"], cwd=tmp_path, check=True)
    metrics = [json.loads(line) for line in (tmp_path / "runs/pydoc/metrics.jsonl").read_text().splitlines()]
    assert min(m["val_loss"] for m in metrics) < 1.9
    sample = subprocess.run(
        [*command, "sample", "-n", "2000", "--seed", "0"], cwd=tmp_path, check=True, capture_output=True, text=True
    ).stdout
    words = sample.split()
    assert sum(w in {"the", "of", "is", "a", "to", "and"} for w in words) > 20
