"""The CLI as a user meets it: real processes, real pipes, one-line errors."""

import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import charrnn_in_process, periodic_text

from charrnn.breakdown import PARTS
from charrnn.config import (
    MAX_TIMED_EPOCHS,
    WIDE_CELL,
    WIDE_HIDDEN_SIZE,
    WIDE_LEARNING_RATE,
    ModelConfig,
    TrainConfig,
    auto_embed_size,
)

CHARRNN = [sys.executable, "-m", "charrnn.cli.main"]
TINY = ["--layers", "1", "--hidden", "32", "--embed", "8", "-b", "4", "-t", "16", "--dropout", "0"]


def charrnn(*args, input=None, check=True, cwd=None):
    result = subprocess.run(
        [*CHARRNN, *args], capture_output=True, text=True, input=input, cwd=cwd, env=os.environ | {"COLUMNS": "200"}
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("cli")
    env_cache = home / "cache"
    os.environ["CHARRNN_CACHE"] = str(env_cache)  # module-scoped fixture: the autouse one is not active yet
    (home / "text.txt").write_text(periodic_text(3000))
    result = charrnn("train", "text.txt", *TINY, "--steps", "240", "--lr", "0.01", "--eval-every", "80", cwd=home)
    return home, result


def test_train_writes_a_complete_run_and_reports_on_stderr(trained_run):
    home, result = trained_run
    assert result.stdout == ""  # training prints nothing on stdout
    assert "validation" in result.stderr and "Traceback" not in result.stderr
    run = home / "runs" / "text"
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["hidden_size"] == 32 and config["train"]["steps"] == 240
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [80, 160, 240]
    assert metrics[-1]["val_loss"] < 0.1  # it learned the periodic text
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["160", "240", "80"]


def test_sample_streams_only_text_and_defaults_to_latest_run(trained_run):
    home, _ = trained_run
    result = charrnn("sample", "--temp", "0", "--prime", "hello", "-n", "40", "--seed", "1", cwd=home)
    assert result.stdout == "hello world, hello world, hello world, hello "
    assert result.stderr == ""


def test_sample_num_prints_each_sample_after_a_separator(trained_run):
    home, _ = trained_run
    result = charrnn(
        "sample",
        "runs/text",
        "--temp",
        "0",
        "--prime",
        "hello w",
        "-n",
        "12",
        "--num",
        "2",
        "--separator",
        "|",
        cwd=home,
    )
    assert result.stdout == "hello world, hello |hello world, hello "


def test_sample_into_head_ends_quietly(trained_run):
    home, _ = trained_run
    command = " ".join(CHARRNN) + ' sample -n 2000000 --temp 1 | head -c 100; echo " ${PIPESTATUS[0]}" >&2'
    result = subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        cwd=home,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
        timeout=120,
    )
    assert len(result.stdout) == 100
    assert result.stderr.strip() == "0", result.stderr  # exit status 0 and nothing else on stderr


def test_unknown_prime_character_is_named(trained_run):
    home, _ = trained_run
    result = charrnn("sample", "--prime", "hi Q", cwd=home, check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "'i'" in result.stderr and "'Q'" in result.stderr
    skipped = charrnn("sample", "--prime", "hQ", "--skip-unknown", "-n", "3", "--temp", "0", cwd=home)
    assert skipped.stdout.startswith("h")


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["train", "missing.txt"], 1, "does not exist"),
        (["train", "text.txt", "--hidden", "0"], 2, "--hidden"),
        (["train", "text.txt", "--time", "soon"], 2, "--time"),
        (["train", "text.txt", "--cell", "transformer"], 2, "--cell"),
        (["train", "text.txt", "--ema", "1"], 2, "--ema must be in [0, 1), not 1.0"),
        (["train", "text.txt", "--weight-decay", "-0.1"], 2, "--weight-decay must be between 0 and 1, not -0.1"),
        (["train", "text.txt", "--recurrent-dropout", "-0.1"], 2, "--recurrent-dropout must be in [0, 1), not -0.1"),
        (["train", "text.txt", "--weight-drop", "1"], 2, "--weight-drop must be in [0, 1), not 1.0"),
        (["sample", "--temp", "-1"], 2, "--temp"),
        (["sample", "nowhere"], 1, "not a charrnn run"),
    ],
)
def test_user_mistakes_are_one_line_errors(tmp_path, args, code, fragment):
    (tmp_path / "text.txt").write_text(periodic_text(3000))
    result = charrnn(*args, check=False, cwd=tmp_path)
    assert result.returncode == code
    assert fragment in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unreadable_corpus_is_one_line(tmp_path):
    """Root reads any file, so as root the check runs without the capabilities that allow it."""
    secret = tmp_path / "secret.txt"
    secret.write_text(periodic_text(3000))
    secret.chmod(0)
    prefix = []
    if os.geteuid() == 0:
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: permissions cannot be denied")
    result = subprocess.run(
        [*prefix, *CHARRNN, "train", str(secret), *TINY, "--steps", "1"], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 1
    assert result.stderr == f"charrnn: error: corpus {secret} is not readable (permission denied)\n"
    assert not (tmp_path / "runs").exists()


def test_a_corpus_of_one_long_line_trains(tmp_path):
    """No newline anywhere (a minified file, a 200 MB single line at full size: see test_slow.py)."""
    line = "".join(f"{i % 97:02d}-{i % 89:02d}," for i in range(20_000))
    (tmp_path / "line.txt").write_text(line)
    result = charrnn_in_process("train", "line.txt", *TINY, "--steps", "2", "--eval-every", "2", cwd=tmp_path)
    assert "validation" in result.stderr
    sample = charrnn_in_process("sample", "-n", "50", "--seed", "1", cwd=tmp_path).stdout
    assert len(sample) == 50 and set(sample) <= set(line)


def test_resume_refuses_other_options_and_a_changed_corpus_and_touches_nothing(tmp_path):
    (tmp_path / "text.txt").write_text(periodic_text(3000))
    charrnn_in_process("train", "text.txt", "--out", "run", *TINY, "--steps", "2", cwd=tmp_path)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")}
    other = charrnn_in_process("train", "--resume", "run", "--hidden", "64", "--lr", "0.1", check=False, cwd=tmp_path)
    assert other.returncode == 2
    assert other.stderr == (
        "charrnn: error: --hidden, --lr differ from the run being resumed; drop them or start a new run with --out\n"
    )
    (tmp_path / "text.txt").write_text(periodic_text(3000).upper())
    changed = charrnn_in_process("train", "--resume", "run", check=False, cwd=tmp_path)
    assert changed.returncode == 1
    assert "has changed since run was trained on it" in changed.stderr and len(changed.stderr.splitlines()) == 1
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")} == before


def test_a_run_whose_validation_peaked_early_says_so_and_what_would_help(tmp_path):
    # Training alternates a and b; the held-out end repeats a: the surer the model grows of the
    # alternation, the worse it predicts the held-out text, so validation is best near the start.
    (tmp_path / "text.txt").write_text("ab" * 1800 + "a" * 400)
    args = ("train", "text.txt", *TINY, "--steps", "160", "--lr", "0.01", "--eval-every", "20")
    result = charrnn_in_process(*args, cwd=tmp_path)
    assert "model memorised the training text" in result.stderr, result.stderr
    assert "more --dropout or --weight-decay" in result.stderr and result.stdout == ""


def test_sample_without_any_run_says_where_it_looked(tmp_path):
    result = charrnn("sample", check=False, cwd=tmp_path)
    assert result.returncode == 1
    assert str(tmp_path / "runs") in result.stderr


def test_help_shows_the_defaults_it_writes_out():
    """Help texts spell some defaults out ("[default: …]"), which typer cannot show for options that default to None."""
    train = " ".join(charrnn("train", "--help").stdout.split())  # as one line: wrapped at the terminal's width
    shown_defaults = ("[default: 32]", "[default: 0.1]", "[default: 0 up to 3 planned epochs", "[default: 10 if no")
    for shown in shown_defaults:
        assert shown in train
    assert "[default: a new one each call]" in charrnn("sample", "--help").stdout


def test_help_and_option_errors_do_not_import_jax():
    code = (
        "import sys, typer.testing\n"
        "from charrnn.cli.main import app\n"
        "result = typer.testing.CliRunner().invoke(app, ['--help'])\n"
        "assert result.exit_code == 0 and 'sample' in result.stdout\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'rich'], 'plain help needs no rich'\n"
        "for name in ['train', 'sample', 'prep', 'corpus', 'score', 'eval', 'info', 'runs', 'plot']:\n"
        "    assert typer.testing.CliRunner().invoke(app, [name, '--help']).exit_code == 0\n"
        "from charrnn.config import CELLS\n"
        "for name in ['train', 'bench']:\n"  # every registered cell is offered
        "    text = typer.testing.CliRunner().invoke(app, [name, '--help'], env={'COLUMNS': '400'}).stdout\n"
        "    text = '-'.join(part.lstrip() for part in text.split('-\\n'))\n"  # a name wrapped at a hyphen
        "    assert all(cell in text for cell in CELLS), text\n"
        "from charrnn.errors import UsageError\n"
        "for args in (['sample', '--temp', '-1'], ['sample', '--top-p', '0'], ['train', 'x', '--hidden', '0'],\n"
        "             ['train', 'x', '--cell', 'transformer'], ['bench', '--cell', 'lstm-ln,transformer'],\n"
        "             ['score', '--unknown', 'x'], ['score', '--checkpoint', 'x'], ['eval', '--streams', '0']):\n"
        "    assert isinstance(typer.testing.CliRunner().invoke(app, args).exception, UsageError), args\n"
        "error = typer.testing.CliRunner().invoke(app, ['bench', '--cell', 'lstm-ln,transformer']).exception\n"
        "assert str(error).endswith(\"not 'transformer'\"), error\n"  # a comma-separated list, each checked
        "print(sorted(m for m in ('jax', 'flax', 'optax', 'orbax', 'numpy') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("value", "code", "message"),
    [("", 2, "--profile must not be empty"), ("afile", 1, "--profile afile is a file, not a directory")],
)
def test_bench_refuses_a_profile_directory_it_cannot_write_in_one_line(tmp_path, value, code, message):
    (tmp_path / "afile").write_text("mine")
    result = charrnn_in_process("bench", "--profile", value, cwd=tmp_path, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (code, "", f"charrnn: error: {message}\n")
    assert (tmp_path / "afile").read_text() == "mine"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["train", "--bogus"], "--bogus"),
        (["sample", "--temp"], "--temp"),
        (["train", "--hidden", "many"], "--hidden"),
        (["score", "a", "b", "c"], "(c)"),
        (["corpus", "get"], "'NAME'"),
    ],
)
def test_a_mistyped_command_line_is_one_line(args, named):
    """Click's own errors (unknown option, missing value or argument) read like every other mistake:
    one line naming what is wrong (click words it; its wording varies between versions), exit 2."""
    result = charrnn_in_process(*args, check=False)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("charrnn: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert named in result.stderr and "Traceback" not in result.stderr


def test_prep_prints_statistics_to_stderr(tmp_path):
    path = Path(tmp_path / "mixed.txt")
    path.write_text("床前明月光，疑是地上霜。\r\n" * 20, encoding="utf-8", newline="")
    result = charrnn("prep", str(path), cwd=tmp_path)
    assert result.stdout == ""
    assert "vocabulary 14" in result.stderr and "280 characters" in result.stderr and "train" in result.stderr
    assert "(cached)" in charrnn("prep", str(path), cwd=tmp_path).stderr


@pytest.mark.parametrize(
    "extras",
    [
        ["--breakdown", "--profile", "trace"],
        # Two more models' programs, compiled cold: the slowest part of this test, so kept out of the quick suite.
        pytest.param(["--bidirectional", "--attention", "6"], marks=pytest.mark.slow),
    ],
    ids=["breakdown", "bidirectional-attention"],
)
def test_bench_reports_throughput_against_the_peak(tmp_path, extras):
    result = charrnn(
        "bench",
        "--cell",
        "lstm-ln",
        "--dtype",
        "float32",
        "--layers",
        "1",
        "--hidden",
        "16",
        "--embed",
        "8",
        "--vocab",
        "20",
        "-b",
        "2",
        "-t",
        "4",
        "--steps",
        "1",
        "--streams",
        "3",
        "--chunk",
        "8",
        "--score-rows",
        "4",
        "--score-length",
        "8",
        "--peak-size",
        "128",
        *extras,
        "--json",
        "--no-startup",  # timed in fresh processes: test_bench_times_the_first_character_of_a_fresh_process
        cwd=tmp_path,
    )
    report = json.loads(result.stdout)
    assert set(report["peak_gflops"]) == {"float32", "bfloat16"}
    assert all(v > 0 for v in report["peak_gflops"].values())
    (model,) = report["models"]
    assert (model["cell"], model["dtype"]) == ("lstm-ln", "float32")
    # From the parameter tree: embed 20×8, head 16×20 + 20, input 8×64, recurrent 16×64, 2 biases and
    # 2 gains of 64, cell gain and shift of 16.
    assert model["parameters"] == 160 + 340 + 512 + 1024 + 4 * 64 + 2 * 16
    train = model["train"]
    assert train["chars_per_second"] > 0
    matmul_weights = 8 * 64 + 16 * 64 + 16 * 20  # 3 matmuls (forward, 2 backward) × 2 FLOPs per weight
    assert train["gflops"] == pytest.approx(train["chars_per_second"] * 6 * matmul_weights / 1e9)
    assert train["fraction_of_peak"] == pytest.approx(train["gflops"] / report["peak_gflops"]["float32"])
    assert model["sample_1"]["chars_per_second"] > 0 and model["sample_3"]["chars_per_second"] > 0
    score = model["score"]
    assert score["rows"] == 4 and score["length"] == 8 and score["chars_per_second"] > 0
    assert score["fraction_of_peak"] == pytest.approx(score["gflops"] / report["peak_gflops"]["float32"])
    assert "startup" not in report
    if "--breakdown" in extras:
        assert_breakdown(model, tmp_path)
    if "--bidirectional" in extras:
        assert_bidirectional_and_attention(model, matmul_weights)


def assert_breakdown(model, tmp_path):
    parts = model["breakdown"]  # each part of the step run alone: every one timed, the rest is the difference
    assert set(parts["parts"]) == set(PARTS)
    # Every part timed on its own takes time; the backward loops are a difference of two timings (the
    # loop with its weight gradient, less that gradient alone), which at these tiny sizes on a busy
    # machine can come out at or below zero.
    assert all(p["seconds"] > 0 for name, p in parts["parts"].items() if name != "backward loops")
    total = sum(p["seconds"] for p in parts["parts"].values()) + parts["rest_seconds"]
    assert total == pytest.approx(parts["step_seconds"])
    for name in ("forward loops", "weight gradients", "output and loss"):
        assert parts["parts"][name]["fraction_of_peak"] > 0, name
    assert list((tmp_path / "trace" / "lstm-ln-float32").rglob("*.xplane.pb"))  # XLA's profiler trace


def assert_bidirectional_and_attention(model, matmul_weights):
    train = model["train"]
    both = model["bidirectional"]  # two stacks, the head reads both: 2 × (input + recurrent) + 32×20 + 20
    assert both["parameters"] == 160 + 2 * (512 + 1024 + 4 * 64 + 2 * 16) + 640 + 20
    # Its training FLOPs count both stacks and the look-ahead (32 characters per window of 4, forward only).
    weights = 2 * (8 * 64 + 16 * 64) + 32 * 20
    flops = 6 * weights + 2 * (8 * 64 + 16 * 64) * 32 / 4
    assert both["train"]["gflops"] == pytest.approx(both["train"]["chars_per_second"] * flops / 1e9)
    assert both["train"]["of_left_to_right"] == pytest.approx(
        both["train"]["chars_per_second"] / train["chars_per_second"]
    )
    assert both["check"]["chars_per_second"] > 0
    # + query and key kernels 16×16 (keys no wider than the outputs), query bias, norm and 2 gates
    # 5 × 16, value gate and 2 norms 5 × 16
    attended = model["attention"]
    assert attended["positions"] == 6 and attended["parameters"] == model["parameters"] + 2 * 16 * 16 + 160
    # FLOPs: the query's and keys' matmuls, and scores and mix over the 6 positions attended.
    flops = 6 * (matmul_weights + 2 * 16 * 16) + 3 * 2 * (16 + 16) * 6
    assert attended["train"]["gflops"] == pytest.approx(attended["train"]["chars_per_second"] * flops / 1e9)
    for name in ("train", "sample_1", "sample_3", "score"):
        assert attended[name]["of_without"] == pytest.approx(
            attended[name]["chars_per_second"] / model[name]["chars_per_second"]
        )


@pytest.mark.slow  # three fresh processes of `charrnn sample` and one of `--help`, each importing JAX
def test_bench_times_the_first_character_of_a_fresh_process(tmp_path):
    tiny = ["--layers", "1", "--hidden", "16", "--embed", "8", "--vocab", "20", "-b", "2", "-t", "4", "--steps", "1"]
    args = [*tiny, "--streams", "1", "--chunk", "8", "--score-rows", "1", "--score-length", "8", "--peak-size", "64"]
    # Run where a folder named charrnn/ sits (a checkout's root): the fresh processes must still find the
    # installed package. The installed command, unlike `python -m`, does not put its directory on the path.
    (tmp_path / "charrnn").mkdir()
    (tmp_path / "charrnn" / "__init__.py").write_text("")
    command = [str(Path(sys.executable).with_name("charrnn")), "bench", "--cell", "gru", "--dtype", "float32"]
    result = subprocess.run([*command, *args, "--json"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    startup = json.loads(result.stdout)["startup"]
    assert 0 < startup["first_char_warm_seconds"] <= startup["first_char_cold_seconds"] + 1
    assert 0 < startup["help_seconds"]


def test_training_records_device_and_characters_seen(trained_run):
    home, _ = trained_run
    config = json.loads((home / "runs" / "text" / "config.json").read_text())
    assert config["run"]["platform"] == "cpu" and config["run"]["precision"] == config["model"]["dtype"]
    assert config["run"]["parent"] is None and config["run"]["device"]
    metrics = [json.loads(line) for line in (home / "runs" / "text" / "metrics.jsonl").read_text().splitlines()]
    assert [m["chars_seen"] for m in metrics] == [80 * 4 * 16, 160 * 4 * 16, 240 * 4 * 16]
    info = json.loads(charrnn("info", "runs/text", "--json", cwd=home).stdout)
    assert info["platform"] == "cpu" and info["steps"] == 240 and info["chars_seen"] == 240 * 4 * 16


def test_sample_stop_and_separator_understand_escapes(trained_run):
    home, _ = trained_run
    args = ["sample", "runs/text", "--temp", "0", "--prime", "hello", "-n", "100", "--num", "2"]
    result = charrnn(*args, "--stop", "ld", "--stop", "o\\n", "--separator", "\\t|\\\\n", cwd=home)
    assert result.stdout == "hello world\t|\\nhello world"
    empty = charrnn(*args, "--stop", "", check=False, cwd=home)
    assert (empty.returncode, empty.stderr) == (2, "charrnn: error: --stop must not be empty\n")


def test_shell_completion_completes_commands_and_options_without_jax():
    code = (
        "import sys\n"
        "from charrnn.cli.main import app\n"
        "try:\n"
        "    app(prog_name='charrnn')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in ('jax', 'flax', 'optax', 'orbax', 'numpy') if m in sys.modules), file=sys.stderr)\n"
    )

    def complete(words: str) -> subprocess.CompletedProcess:
        cword = str(len(words.split()) - 1)
        env = os.environ | {"_CHARRNN_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": cword}
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)

    commands = complete("charrnn in")
    assert commands.stdout.split() == ["info"] and commands.stderr.strip() == "[]"
    options = complete("charrnn sample --st")
    assert options.stdout.split() == ["--stop"] and options.stderr.strip() == "[]"
    # The script is for the shell charrnn runs under (Typer looks for it among the parent processes,
    # and a test runner need not have one): run under bash, which must not exec it (hence `; true`).
    shown = subprocess.run(
        ["bash", "-c", '"$@"; true', "bash", *CHARRNN, "--show-completion"], capture_output=True, text=True
    )
    assert "_CHARRNN_COMPLETE=complete_bash" in shown.stdout, shown.stderr


@pytest.mark.parametrize(
    ("hidden", "epochs", "dropout", "drop", "decay", "ema", "beside_given_drop"),
    # 1,245 parameters for 1,080 training characters: the epochs count at 0.46 for dropout and weight
    # decay (2.5 per character is the reference); 14,061 parameters: at 5.2, so that 6 epochs of the
    # wider model count as 31, with weight drop taken from the dropout. The average goes by the epochs.
    # A weight drop of 0.2 given takes its 0.08 past 0.12 from the full dropout (0.3 at 31 epochs).
    [
        ("16", "2", 0.0, 0.0, 0.1, 0.0, 0.0),
        ("16", "12", 0.08, 0.0, 0.1, 0.999, 0.0),
        ("64", "6", 0.25, 0.17, 0.34, 0.999, 0.22),
    ],
)
def test_regularisation_and_the_average_follow_the_budget_unless_given(
    tmp_path, hidden, epochs, dropout, drop, decay, ema, beside_given_drop
):
    (tmp_path / "text.txt").write_text(periodic_text(1200))
    small = ["--layers", "1", "--hidden", hidden, "--embed", "4", "-b", "4", "--eval-every", "1000"]
    result = charrnn_in_process("train", "text.txt", *small, "--epochs", epochs, cwd=tmp_path)
    regularised = f"dropout {dropout:g}" + (f", weight drop {drop:g}" if drop else "")
    regularised += f", weight decay {decay:g}" if decay != 0.1 else ""
    chosen = regularised + (f", weights averaged with decay {ema:g}" if ema else "")
    assert f"{chosen} (the budget covers about {float(epochs):.1f} epochs, with" in result.stderr
    config = json.loads((tmp_path / "runs" / "text" / "config.json").read_text())
    chosen_values = (config["model"]["dropout"], config["model"]["weight_drop"], config["train"]["weight_decay"])
    assert (*chosen_values, config["train"]["ema"]) == (dropout, drop, decay, ema)
    options = ["--dropout", "0.1", "--weight-decay", "0.15", "--ema", "0.5"]  # weight drop: none beside a given dropout
    given = charrnn_in_process("train", "text.txt", *small, "--epochs", epochs, *options, cwd=tmp_path)
    assert "budget covers" not in given.stderr
    config = json.loads((tmp_path / "runs" / "text-2" / "config.json").read_text())
    given_values = (config["model"]["dropout"], config["model"]["weight_drop"], config["train"]["weight_decay"])
    assert (*given_values, config["train"]["ema"]) == (0.1, 0.0, 0.15, 0.5)
    ema_given = charrnn_in_process("train", "text.txt", *small, "--epochs", epochs, "--ema", "0", cwd=tmp_path)
    assert f"{regularised} (the budget covers" in ema_given.stderr
    assert json.loads((tmp_path / "runs" / "text-3" / "config.json").read_text())["train"]["ema"] == 0.0
    drop_given = ["--weight-drop", "0.2"]  # takes what it has past 0.12 from the chosen dropout
    charrnn_in_process("train", "text.txt", *small, "--epochs", epochs, *drop_given, cwd=tmp_path)
    model = json.loads((tmp_path / "runs" / "text-4" / "config.json").read_text())["model"]
    assert (model["dropout"], model["weight_drop"]) == (beside_given_drop, 0.2)


def test_a_time_budget_alone_stops_after_the_epochs_past_which_a_text_is_memorised(tmp_path):
    """Ten minutes of a tiny model cover thousands of epochs of 1,080 characters: the run plans
    `MAX_TIMED_EPOCHS`, chooses its regularisation for them, says so and stops there; an epochs
    budget given beside the time is the user's to keep."""
    (tmp_path / "text.txt").write_text(periodic_text(1200))
    small = ["--layers", "1", "--hidden", "16", "--embed", "4", "-b", "4", "-t", "16", "--eval-every", "1000"]
    result = charrnn_in_process("train", "text.txt", *small, "--time", "10m", cwd=tmp_path)
    assert f"training stops after {MAX_TIMED_EPOCHS:g} epochs, though the time given covers about" in result.stderr
    assert f"(the budget covers about {MAX_TIMED_EPOCHS:.1f} epochs" in result.stderr
    windows = 1079 // 4 // 16
    assert f"stopped (epochs) at step {int(MAX_TIMED_EPOCHS) * windows};" in result.stderr
    train = json.loads((tmp_path / "runs" / "text" / "config.json").read_text())["train"]
    assert (train["epochs"], train["time_seconds"]) == (MAX_TIMED_EPOCHS, 600.0)
    longer = charrnn_in_process("train", "text.txt", *small, "--time", "10m", "--epochs", "41", cwd=tmp_path)
    assert "training stops after" not in longer.stderr
    assert f"stopped (epochs) at step {41 * windows};" in longer.stderr


def test_a_time_budget_the_default_model_cannot_fill_trains_a_wider_one_unless_a_width_is_given(tmp_path, monkeypatch):
    """Where the time covers more than `WIDE_FROM_EPOCHS` epochs of the default width on a text large
    for it, the run trains `WIDE_HIDDEN_SIZE` units instead, says so, and plans that model's epochs;
    a width given is kept, and its regularisation counts each of its epochs `WIDENED_EPOCH_WEIGHT`
    times, weighed as the default width's (`widened_load`).
    (The epochs a time covers are stubbed here: a test's text is small for any model, and minutes of
    training are not what is tested.)"""
    from charrnn import config, start

    planned = []

    def stub(model_config, train_config, train_characters):
        planned.append(model_config.hidden_size)
        return 1000.0

    loads = []

    def weighed(epochs, parameters, train_characters):
        loads.append((epochs, parameters, config.widened_load(epochs, parameters, train_characters)))
        return loads[-1][-1]

    monkeypatch.setattr(start, "planned_epochs", stub)
    monkeypatch.setattr(start, "widened_load", weighed)
    monkeypatch.setattr(config, "WIDE_PARAMETERS_PER_CHARACTER", math.inf)
    (tmp_path / "text.txt").write_text(periodic_text(600))
    small = ["--layers", "1", "-b", "4", "-t", "16", "--eval-every", "1000", "--time", "10m"]
    result = charrnn_in_process("train", "text.txt", *small, cwd=tmp_path)
    assert planned == [ModelConfig.hidden_size, WIDE_HIDDEN_SIZE]
    assert f"a 1×{WIDE_HIDDEN_SIZE} model: the time given covers about 1000 epochs of the" in result.stderr
    config_json = json.loads((tmp_path / "runs" / "text" / "config.json").read_text())
    assert (config_json["model"]["hidden_size"], config_json["train"]["epochs"]) == (WIDE_HIDDEN_SIZE, MAX_TIMED_EPOCHS)
    default_width = ModelConfig(vocab_size=config_json["model"]["vocab_size"], layers=1, embed_size=64)
    assert [load[:2] for load in loads] == [(MAX_TIMED_EPOCHS, default_width.fitted_parameter_count())]
    load = loads[-1][2]
    assert config_json["train"]["weight_decay"] == config.auto_weight_decay(load)
    why = f"(the budget covers about {MAX_TIMED_EPOCHS:.1f} epochs, weighed for the wider model as {load:.1f})"
    assert why in result.stderr
    assert (config_json["model"]["cell"], config_json["train"]["learning_rate"]) == (WIDE_CELL, WIDE_LEARNING_RATE)
    assert f"; cell {WIDE_CELL}, peak learning rate {WIDE_LEARNING_RATE:g}" in result.stderr
    given = charrnn_in_process("train", "text.txt", *small, "--hidden", "32", cwd=tmp_path)
    assert "model: the time given covers" not in given.stderr
    config_json = json.loads((tmp_path / "runs" / "text-2" / "config.json").read_text())
    assert config_json["model"]["hidden_size"] == 32
    assert (config_json["model"]["cell"], config_json["train"]["learning_rate"]) == (
        ModelConfig.cell,
        TrainConfig.learning_rate,
    )
    # A cell or a learning rate given is kept where the model widens.
    charrnn_in_process("train", "text.txt", *small, "--cell", "gru", "--lr", "0.01", cwd=tmp_path)
    config_json = json.loads((tmp_path / "runs" / "text-3" / "config.json").read_text())
    assert config_json["model"]["hidden_size"] == WIDE_HIDDEN_SIZE
    assert (config_json["model"]["cell"], config_json["train"]["learning_rate"]) == ("gru", 0.01)


def test_the_embedding_widens_with_the_vocabulary_unless_given(tmp_path):
    """An alphabet keeps ModelConfig's 64; a logographic script's thousand characters get wider rows."""
    rng = np.random.default_rng(0)
    (tmp_path / "latin.txt").write_text(periodic_text(400))
    (tmp_path / "hanzi.txt").write_text("".join(chr(0x4E00 + i) for i in rng.permutation(1100).repeat(2)))
    small = ["--layers", "1", "--hidden", "128", "-b", "2", "-t", "4", "--steps", "1", "--eval-every", "1000"]

    def embed(name, *options):
        charrnn_in_process("train", f"{name}.txt", "--out", name, *small, *options, cwd=tmp_path)
        return json.loads((tmp_path / name / "config.json").read_text())["model"]["embed_size"]

    assert embed("latin") == ModelConfig.embed_size == 64
    assert embed("hanzi") == auto_embed_size(1100, 128) == 128
    (tmp_path / "given.txt").write_text((tmp_path / "hanzi.txt").read_text())
    assert embed("given", "--embed", "8") == 8


def test_train_on_process_substitution_and_resume_from_the_cache(tmp_path):
    """`charrnn train <(zcat big.txt.gz)`: bash hands over a pipe (/dev/fd/63), which can be read
    only once; resuming takes the text from the preparation cache, or asks for it when it is gone."""
    (tmp_path / "text.txt").write_text(periodic_text(3000))
    command = shlex.join([*CHARRNN, "train"]) + " <(cat text.txt) " + shlex.join(["--out", "run", *TINY])
    first = subprocess.run(
        ["bash", "-c", command + " --steps 2 --eval-every 2"], capture_output=True, text=True, cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr
    source = json.loads((tmp_path / "run" / "config.json").read_text())["corpus"]["source"]
    assert source.startswith(("/dev/fd/", "/proc/self/fd/")), source
    resumed = charrnn_in_process("train", "--resume", "run", "--steps", "4", "--eval-every", "2", cwd=tmp_path)
    assert "(cached)" in resumed.stderr and "stopped (steps) at step 4" in resumed.stderr
    shutil.rmtree(tmp_path / "cache" / "prep")
    gone = charrnn_in_process("train", "--resume", "run", "--steps", "6", cwd=tmp_path, check=False)
    assert (gone.returncode, gone.stderr) == (
        1,
        f"charrnn: error: run was trained on text read from a pipe ({source}), which is no longer cached; "
        "give the same text as FILE to resume\n",
    )
    given = charrnn_in_process(
        "train", "--resume", "run", "text.txt", "--steps", "6", "--eval-every", "2", cwd=tmp_path
    )
    assert "stopped (steps) at step 6" in given.stderr


@pytest.mark.parametrize(
    ("redirect", "args", "message"),
    [
        ("<&-", ["prep", "-"], "standard input is closed; give a file, or pipe the text in"),
        ("<&-", ["score", "nowhere/run", "-"], "standard input is closed; give a file, or pipe the text in"),
        (">&-", ["corpus", "list"], "cannot write to standard output: it is closed"),
    ],
)
def test_a_closed_standard_stream_is_one_line(tmp_path, redirect, args, message):
    """Started with stdin or stdout closed (`<&-`, `>&-`), where Python leaves sys.stdin/stdout None."""
    result = subprocess.run(
        ["bash", "-c", f"{shlex.join([*CHARRNN, *args])} {redirect}"], capture_output=True, text=True, cwd=tmp_path
    )
    assert (result.returncode, result.stderr) == (1, f"charrnn: error: {message}\n")


def test_no_compile_cache_turns_off_jaxs_own_cache_too(tmp_path):
    """CHARRNN_NO_COMPILE_CACHE=1 beside JAX_COMPILATION_CACHE_DIR (a test session's, a user's): no
    program is written there (the two-host tests ran with a cache they meant to turn off)."""
    script = "from charrnn.cli.process import configure_jax; configure_jax(); import jax; jax.jit(lambda x: x + 1)(1.0)"
    env = os.environ | {
        "CHARRNN_NO_COMPILE_CACHE": "1",
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=120)
    assert not any((tmp_path / "xla").glob("*"))
    subprocess.run([sys.executable, "-c", script], env=env | {"CHARRNN_NO_COMPILE_CACHE": ""}, check=True, timeout=120)
    assert any((tmp_path / "xla").glob("*"))  # the same program is cached without the setting
