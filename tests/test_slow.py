"""Long end-to-end runs: excluded by default, run with `pytest -m slow`."""

import json
import os
import subprocess
import sys
import time

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


def test_a_200_megabyte_single_line_is_prepared_quickly_in_bounded_memory(tmp_path):
    path = tmp_path / "line.txt"
    with path.open("wb") as out:
        for i in range(200):
            verse = f"{i:03d} all the world's a stage, and all the men and women merely players; "
            out.write((verse * 20_000).encode()[: 1 << 20])
    started = time.monotonic()
    with open(tmp_path / "stderr", "w+") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "charrnn.cli.main", "prep", str(path)], stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own peak memory, not the largest so far
        process.returncode = os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        message = stderr.read()
    seconds = time.monotonic() - started
    assert process.returncode == 0, message
    assert "209,715,200 characters" in message
    peak_kb = usage.ru_maxrss
    assert peak_kb < 600_000 and seconds < 60, (peak_kb, seconds)
