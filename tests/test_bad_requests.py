"""Places that cannot be written, requests larger than the machine, options outside what they document:
each one line and a non-zero exit, decided before any slow work."""

import errno
import os
import shutil
import subprocess
import sys
import time

import pytest
from conftest import periodic_text
from typer.testing import CliRunner

from charrnn import memory
from charrnn.cli.main import app
from charrnn.cli.options import flag
from charrnn.config import ModelConfig, TrainConfig
from charrnn.errors import CharrnnError, OutputError, UsageError
from charrnn.paths import check_output_dir, check_output_file, why_unreadable

CHARRNN = [sys.executable, "-m", "charrnn.cli.main"]
TINY = ["--layers", "1", "--hidden", "16", "--embed", "8", "-b", "4", "-t", "8", "--dropout", "0"]


def error_of(args: list[str]) -> tuple[int, str]:
    """Exit code and the one line `charrnn: error: ...` that main() would print."""
    result = CliRunner().invoke(app, args)
    if isinstance(result.exception, CharrnnError):
        shown = result.exception.worded(flag)  # what `main` prints
        assert "\n" not in shown
        return result.exception.exit_code, shown
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.stderr.strip()


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "text.txt").write_text(periodic_text(3000))
    return tmp_path


def test_out_that_cannot_be_a_directory_is_refused_before_any_work(corpus):
    (corpus / "afile").write_text("x")
    assert error_of(["train", "text.txt", "--out", "afile", *TINY]) == (1, "--out afile is a file, not a directory")
    assert error_of(["train", "text.txt", "--out", "afile/run", *TINY]) == (
        1,
        "--out afile/run cannot be created: afile is a file, not a directory",
    )
    assert not (corpus / "cache").exists()  # refused before the corpus was prepared


def unprivileged() -> list[str]:
    """Root writes anywhere; drop the capabilities that allow it, as test_cli does for reading."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: permissions cannot be denied")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def test_read_only_directory_is_refused_in_one_line(corpus):
    (corpus / "ro").mkdir()
    (corpus / "ro").chmod(0o555)
    result = subprocess.run(
        [*unprivileged(), *CHARRNN, "train", "text.txt", "--out", "ro/run", *TINY, "--steps", "1"],
        capture_output=True,
        text=True,
        cwd=corpus,
    )
    assert result.returncode == 1
    assert result.stderr == "charrnn: error: --out ro/run is not writable (in ro): permission denied\n"
    assert list((corpus / "ro").iterdir()) == []


def test_output_checks_leave_nothing_behind_and_accept_missing_parents(tmp_path):
    check_output_dir(tmp_path / "a" / "b" / "c", "--out")  # will be created when written
    check_output_file(tmp_path / "new" / "report.html", "--html")
    (tmp_path / "old.html").write_text("old")
    check_output_file(tmp_path / "old.html", "--html")  # replaced when written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.html"]
    with pytest.raises(OutputError, match="--html .* is a directory, not a file"):
        check_output_file(tmp_path, "--html")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    with pytest.raises(OutputError, match="broken symbolic link"):
        check_output_dir(tmp_path / "dangling" / "run", "--out")


def test_a_missing_parent_of_out_is_created(corpus):
    result = CliRunner().invoke(app, ["train", "text.txt", "--out", "new/deep/run", *TINY, "--steps", "1"])
    assert result.exit_code == 0, result.output
    assert (corpus / "new" / "deep" / "run" / "config.json").exists()


def test_run_directory_deleted_during_training_is_one_line(corpus):
    process = subprocess.Popen(
        [*CHARRNN, "train", "text.txt", "--out", "run", *TINY, "--steps", "100000", "--eval-every", "2"],
        cwd=corpus,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (corpus / "run" / "checkpoints" / "2").is_dir():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        shutil.rmtree(corpus / "run", ignore_errors=True)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 1, stderr
    errors = [line for line in stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert len(errors) == 1 and errors[0].startswith("charrnn: error: "), stderr
    assert "run" in errors[0] and ("disappeared" in errors[0] or "gone" in errors[0] or "append" in errors[0]), stderr


def test_memory_estimates_grow_with_the_request_and_refuse_in_one_line():
    model = ModelConfig(vocab_size=65, hidden_size=512)
    small, large = memory.sampling_bytes(model, 1, 0), memory.sampling_bytes(model, 100_000, 0)
    assert small < large and large > 100_000 * 2 * 2 * 512 * 4  # at least the recurrent state of every stream
    assert memory.sampling_bytes(model, 64, 100_000) > memory.sampling_bytes(model, 64, 10)  # a long prime
    assert memory.training_bytes(model, TrainConfig(batch_size=64)) > memory.training_bytes(model, TrainConfig())
    assert memory.training_bytes(model, TrainConfig(ema=0.99)) > memory.training_bytes(model, TrainConfig())
    assert memory.available_bytes() > 0
    with pytest.raises(UsageError, match=r"^sampling needs about 2\.0 GiB of memory; this machine has 1\.0 GiB"):
        memory.require(2 << 30, "sampling", available=1 << 30)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("tiny")
    os.environ["CHARRNN_CACHE"] = str(home / "cache")  # module-scoped fixture: the autouse one is not active yet
    (home / "text.txt").write_text(periodic_text(3000))
    result = CliRunner().invoke(
        app, ["train", str(home / "text.txt"), "--out", str(home / "run"), *TINY, "--steps", "1"]
    )
    assert result.exit_code == 0, result.output
    return home / "run"


def test_sampling_too_many_streams_is_refused_before_loading(tiny_run):
    code, message = error_of(["sample", str(tiny_run), "--num", "100000000"])
    assert code == 2 and message.startswith("sampling 100,000,000 streams from a 1×16 LSTM-COUPLED needs about ")
    assert "GiB available" in message


def test_many_long_samples_stream_through_a_spool_and_head_ends_quietly(tiny_run):
    # Samples 2..N come back from the spool exactly as generated: with temperature 0 all are equal.
    args = ["sample", str(tiny_run), "-n", "700", "--num", "3", "--temp", "0", "--separator", "|"]
    first, second, third = CliRunner().invoke(app, args).stdout.split("|")
    assert len(first) == 700 and first == second == third
    command = (
        " ".join(CHARRNN) + f' sample {tiny_run} -n 100000000 --num 2 | head -c 100; echo " ${{PIPESTATUS[0]}}" >&2'
    )
    piped = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert len(piped.stdout) == 100 and piped.stderr.strip() == "0", piped.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["bench", "--cell", "banana"],
            "--cell must be one of lstm, gru, rnn, lstm-peephole, lstm-coupled, lstm-ln, gru-ln, lstm-coupled-mi "
            "or all (or a list of them), not 'banana'",
        ),
        (["bench", "--hidden", "0"], "--hidden must be between 1 and 65536, not 0"),
        (["bench", "--steps", "0"], "--steps must be between 1 and 1048576, not 0"),
        (["bench", "--dtype", "float16"], "--dtype must be one of float32, bfloat16 or all, not 'float16'"),
        (["bench", "--peak-size", "1000000"], "--peak-size must be between 1 and 32768, not 1000000"),
        (
            ["prep", "text.txt", "--encoding", "rot13"],
            "--encoding 'rot13' is not a text encoding (it transforms bytes)",
        ),
        (["prep", "text.txt", "--errors", "surrogateescape"], "--errors must be strict, replace or ignore, not"),
        (["train", "--encoding", "klingon"], "unknown --encoding 'klingon'"),  # the built-in corpus too
        (["train", "text.txt", "--seed", "-1"], "--seed must be between 0 and"),
        (["train", "text.txt", "--keep", "0"], "--keep must be between 1 and 10000, not 0"),
        (["train", "--resume", "run", "--out", "x"], "give --out or --resume, not both"),
        (["sample", "--seed", str(1 << 64)], "--seed must be between 0 and"),
        (["sample", "--prime-file", "."], "--prime-file . is a directory, not a text file"),
        (["sample", "--prime-file", "missing.txt"], "--prime-file missing.txt does not exist"),
        (["sample", "--prime-file", "binary.bin"], "--prime-file binary.bin looks binary (NUL byte at offset 2)"),
        (["sample", "--prime-file", "latin1.txt"], "--prime-file latin1.txt is not valid UTF-8 (bad byte at offset 3)"),
    ],
)
def test_options_accept_exactly_what_they_document(corpus, args, message):
    (corpus / "binary.bin").write_bytes(b"ab\0cd")
    (corpus / "latin1.txt").write_bytes("abcé".encode("latin-1"))
    code, line = error_of(args)
    assert code == 2 and line.startswith(message), line


@pytest.mark.parametrize(
    "error, words",
    [
        (FileNotFoundError(errno.ENOENT, "No such file or directory"), "does not exist"),
        (IsADirectoryError(errno.EISDIR, "Is a directory"), "is a directory, not a text file"),
        (PermissionError(errno.EACCES, "Permission denied"), "is not readable (permission denied)"),
        (OSError(errno.EIO, "Input/output error"), "cannot be read: Input/output error"),
    ],
)
def test_every_file_a_command_reads_fails_in_the_same_words(error, words):
    assert why_unreadable(error) == words


def test_a_folder_of_other_files_is_never_written_into(corpus, monkeypatch):
    """The user's own vocab.json and metrics.jsonl (names a run's files also have) beside no config.json."""
    mine = corpus / "mine"
    mine.mkdir()
    (mine / "vocab.json").write_text('{"mine": true}')
    (mine / "metrics.jsonl").write_text("my numbers\n")
    said = "is not empty and not a charrnn run (it holds metrics.jsonl, vocab.json); give a new or empty directory"
    assert error_of(["train", "text.txt", "--out", "mine", *TINY, "--steps", "1"]) == (1, f"--out mine {said}")
    monkeypatch.chdir(mine)
    assert error_of(["train", "../text.txt", "--out", ".", *TINY, "--steps", "1"]) == (1, f"--out . {said}")
    assert sorted(p.name for p in mine.iterdir()) == ["metrics.jsonl", "vocab.json"]  # nothing written, no lock
    assert (mine / "vocab.json").read_text() == '{"mine": true}'
    assert (mine / "metrics.jsonl").read_text() == "my numbers\n"
    assert not (corpus / "cache").exists()  # refused before the corpus was read
    (corpus / "empty").mkdir()  # an empty directory is fine
    monkeypatch.chdir(corpus)
    assert error_of(["train", "text.txt", "--out", "empty", *TINY, "--steps", "1"])[0] == 0
    assert (corpus / "empty" / "config.json").exists()


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (["train", "text.txt", "--out", ""], "--out"),
        (["train", "--resume", ""], "--resume"),
        (["train", "text.txt", "--init-from", ""], "--init-from"),
        (["train", ""], "FILE"),
        (["prep", ""], "FILE"),
        (["sample", ""], "RUN"),
        (["sample", "--prime-file", ""], "--prime-file"),
        (["info", ""], "RUN"),
        (["runs", ""], "DIRECTORY"),
        (["plot", ""], "RUN"),
        (["plot", "-o", ""], "--output"),
        (["score", "", "text.txt"], "RUN"),
        (["score", ""], "RUN or FILE"),
        (["eval", "runs/x", ""], "FILE"),
        (["score", "--html", "", "text.txt"], "--html"),
        (["corpus", "get", "tinyshakespeare", "--url", ""], "--url"),
    ],
)
def test_an_empty_path_is_a_usage_error_not_the_current_directory(corpus, args, name):
    assert error_of(args) == (2, f"{name} must not be empty")
    assert sorted(p.name for p in corpus.iterdir()) == ["text.txt"]


def test_a_file_output_replaces_a_file_but_never_a_runs_own(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    with pytest.raises(OutputError, match=r"^--html .*config.json is a file of the run .*run; give another file name$"):
        check_output_file(run / "config.json", "--html")
    check_output_file(run / "page.html", "--html")  # any other name in a run directory is fine
    from charrnn.paths import write_atomically

    write_atomically(tmp_path / "new" / "deep" / "page.html", lambda target: target.write_text("one"))
    write_atomically(tmp_path / "new" / "deep" / "page.html", lambda target: target.write_text("two"))
    assert (tmp_path / "new" / "deep" / "page.html").read_text() == "two"
    assert sorted(p.name for p in (tmp_path / "new" / "deep").iterdir()) == ["page.html"]  # no temporary left


def test_a_file_output_into_a_pipe_is_written_in_place(tmp_path):
    """`--html /dev/stdout`, or a named pipe: nothing to keep intact, and no temporary beside it."""
    import threading

    from charrnn.paths import write_atomically

    os.mkfifo(tmp_path / "pipe")
    check_output_file(tmp_path / "pipe", "--html")
    received = []
    reader = threading.Thread(target=lambda: received.append((tmp_path / "pipe").read_text()), daemon=True)
    reader.start()
    write_atomically(tmp_path / "pipe", lambda target: target.write_text("<html>"))
    reader.join(timeout=10)
    assert received == ["<html>"] and sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]
