"""`charrnn plot`: a PNG of loss curves, a terminal chart, and one line for each bad input."""

import sys

import pytest
from test_runinfo import charrnn, fake_run

from charrnn.errors import CharrnnError
from charrnn.plotting import load_curves, save_png
from charrnn.runs import Run


def test_curves_follow_the_metrics_in_steps_and_characters(tmp_path):
    run = fake_run(tmp_path / "a")
    curves = load_curves(run)
    assert curves.val == [(10, 2.0), (20, 1.5), (30, 1.7)] and curves.train[0] == (10, 2.1)
    assert [x for x, _ in load_curves(run, "chars").val] == [10 * 64, 20 * 64, 30 * 64]  # batch 4 × seq 16


def test_plot_of_two_runs_writes_one_png(tmp_path):
    fake_run(tmp_path / "runs" / "a")
    fake_run(tmp_path / "runs" / "b", losses=(2.5, 2.0, 1.0))
    result = charrnn("plot", "runs/a", "runs/b", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "runs/a/loss.png\n" and result.stderr == ""
    data = (tmp_path / "runs" / "a" / "loss.png").read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    assert not [p for p in (tmp_path / "runs" / "a").iterdir() if p.name.endswith(".tmp")]


def test_terminal_plot_labels_each_run(tmp_path):
    fake_run(tmp_path / "runs" / "a")
    fake_run(tmp_path / "runs" / "b")
    result = charrnn("plot", "runs/a", "runs/b", "--terminal", "--x", "chars", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for label in ("a train", "a val", "b train", "b val", "characters seen", "nats/char"):
        assert label in result.stdout
    assert "\x1b[" not in result.stdout  # no colour codes into a pipe


def test_bad_inputs_are_one_line(tmp_path):
    run = fake_run(tmp_path / "runs" / "empty", losses=())
    run.metrics_path.write_text("")
    (tmp_path / "norun").mkdir()
    (tmp_path / "afile").write_text("mine")
    fake_run(tmp_path / "runs" / "ok")
    cases = [
        (
            ["runs/empty"],
            "charrnn: error: runs/empty has no metrics yet (no evaluation in metrics.jsonl); nothing to plot",
        ),
        (["norun"], "charrnn: error: norun is not a charrnn run (no config.json)"),
        (
            ["runs/ok", "-o", "afile/x.png"],
            "charrnn: error: --output afile/x.png cannot be created: afile is a file, not a directory",
        ),
        (
            ["runs/ok", "-o", "runs/ok/config.json"],
            "charrnn: error: --output runs/ok/config.json is a file of the run runs/ok; give another file name",
        ),
        (["runs/ok", "--x", "time"], "charrnn: error: --x must be steps or chars, not 'time'"),
    ]
    for args, message in cases:
        result = charrnn("plot", *args, cwd=tmp_path)
        assert (result.returncode != 0, result.stdout, result.stderr) == (True, "", message + "\n")


def test_without_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    run = fake_run(tmp_path / "a")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(CharrnnError, match=r"^plotting needs matplotlib: pip install 'charrnn\[plot\]'$"):
        save_png([Run(run.directory)], tmp_path / "x.png")
