"""Fault injection: kill -9 at random moments, signals, damaged checkpoints, concurrent runs.

Training processes here are real `charrnn train` subprocesses on a tiny model that checkpoints
after every step, so that random kills often land in the middle of writing a checkpoint.
"""

import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import periodic_text

from charrnn.checkpoint import CheckpointStore
from charrnn.runs import Run
from charrnn.trained import load

TINY = ["--layers", "1", "--hidden", "16", "--embed", "8", "-b", "4", "-t", "8", "--keep", "2", "--seed", "3"]
TINY += ["--dropout", "0"]
CHARRNN = [sys.executable, "-m", "charrnn.cli.main"]


def start_training(home: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*CHARRNN, "train", *args], cwd=home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def committed_steps(run: Path) -> list[int]:
    return sorted(int(p.name) for p in (run / "checkpoints").glob("*") if p.name.isdigit())


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "text.txt").write_text(periodic_text(4000))
    return tmp_path


@pytest.mark.parametrize("kills", [3, pytest.param(20, marks=pytest.mark.slow)])  # 20 with -m slow
def test_kill_9_at_random_moments_loses_nothing_beyond_the_last_checkpoint(corpus, kills):
    rng = random.Random(20261122)
    run = corpus / "run"
    args = ["text.txt", "--out", "run", *TINY, "--steps", "100000", "--eval-every", "1"]
    newest_seen = -1
    for attempt in range(kills):
        process = start_training(corpus, *(args if attempt == 0 else ["--resume", "run", "--steps", "100000"]))
        wait_for(lambda seen=newest_seen: bool(committed_steps(run)) and committed_steps(run)[-1] > seen)
        time.sleep(rng.uniform(0.0, 1.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
        load(Run(run), "latest")  # the newest complete checkpoint loads
        store = CheckpointStore(run / "checkpoints", create=False)
        latest = store.latest_step()
        store.close()
        assert latest is not None and latest >= newest_seen  # never goes back in time
        newest_seen = latest
    # A final resume takes over the stale lock and finishes the run.
    done = subprocess.run(
        [*CHARRNN, "train", "--resume", "run", "--steps", str(newest_seen + 3)],
        cwd=corpus,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert committed_steps(run)[-1] == newest_seen + 3


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_checkpoints_and_says_how_to_resume(corpus, sig, code):
    run = corpus / "run"
    process = start_training(corpus, "text.txt", "--out", "run", *TINY, "--steps", "100000", "--eval-every", "50")
    wait_for(lambda: bool(committed_steps(run)))
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert "charrnn train --resume run" in stderr and "Traceback" not in stderr
    stopped_at = int(re.search(r"stopped \(interrupted\) at step (\d+)", stderr).group(1))
    assert committed_steps(run)[-1] == stopped_at  # a checkpoint written at the interruption itself
    assert not (run / "train.lock").exists()


def test_second_trainer_on_the_same_run_is_refused(corpus):
    run = corpus / "run"
    process = start_training(corpus, "text.txt", "--out", "run", *TINY, "--steps", "100000", "--eval-every", "50")
    try:
        wait_for(lambda: bool(committed_steps(run)))
        second = subprocess.run([*CHARRNN, "train", "--resume", "run"], cwd=corpus, capture_output=True, text=True)
        assert second.returncode == 1
        assert f"process {process.pid}" in second.stderr and len(second.stderr.strip().splitlines()) == 1
    finally:
        process.kill()
        process.wait()


HOLD = """
import sys, time
from pathlib import Path
from charrnn.errors import RunError
from charrnn.runs import Run
print("ready", flush=True)  # imported: a slow start on a busy machine must not make a late contender
while not Path(sys.argv[2]).exists():  # a start line, so that every contender tries at once
    time.sleep(0.001)
try:
    with Run(Path(sys.argv[1])).lock():
        print("held", flush=True)
        time.sleep(float(sys.argv[3]))
except RunError as error:
    print(error, flush=True)
"""


def contend(run: Path, count: int, hold: float = 2.0) -> list[tuple[int, str]]:
    """`count` processes that try to lock `run` at the same moment: (pid, what each printed)."""
    go = run.parent / "go"
    processes = [
        subprocess.Popen([sys.executable, "-c", HOLD, str(run), str(go), str(hold)], stdout=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    for process in processes:  # every one at the line before any may go
        assert process.stdout.readline() == "ready\n"
    go.touch()
    results = [(process.pid, process.communicate(timeout=60)[0].strip()) for process in processes]
    go.unlink()
    return results


def test_a_lock_naming_a_live_but_unrelated_process_is_taken_over(tmp_path):
    """The PID in a lock file left by a dead trainer may belong to another process by now (after a
    reboot, or in a container that starts every command as PID 1): the lock is the kernel's, not the
    file's, so it does not matter."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.lock").write_text(f"1 {socket.gethostname()}\n")  # PID 1 is alive, and not a trainer
    ((_, said),) = contend(run, 1, hold=0)
    assert said == "held"
    assert not (run / "train.lock").exists()  # released and removed


def test_of_processes_racing_for_a_stale_lock_exactly_one_wins(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for _ in range(3):
        (run / "train.lock").write_text("999999 elsewhere-or-gone\n")  # left by a trainer that died
        results = contend(run, 4)
        winners = [pid for pid, said in results if said == "held"]
        assert len(winners) == 1, results
        for pid, said in results:
            if pid != winners[0]:
                assert said == f"{run} is being trained by process {winners[0]}; wait for it or stop it"


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(corpus):
    done = subprocess.run(
        [*CHARRNN, "train", "text.txt", "--out", "run", *TINY, "--steps", "6", "--eval-every", "2"],
        cwd=corpus,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    run = corpus / "run"
    assert committed_steps(run)[-2:] == [4, 6]
    for path in (run / "checkpoints" / "6" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])  # truncate every file
    sample = subprocess.run(
        [*CHARRNN, "sample", "run", "--checkpoint", "latest", "-n", "5"], cwd=corpus, capture_output=True, text=True
    )
    assert sample.returncode == 0, sample.stderr
    assert len(sample.stdout) == 5 and "checkpoint 6 is damaged" in sample.stderr
    resumed = subprocess.run(
        [*CHARRNN, "train", "--resume", "run", "--steps", "8"], cwd=corpus, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "checkpoint 6 is damaged" in resumed.stderr
    assert committed_steps(run)[-1] == 8


def test_sample_into_a_full_disk_is_one_line(corpus):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    subprocess.run(
        [*CHARRNN, "train", "text.txt", "--out", "run", *TINY, "--steps", "2"],
        cwd=corpus,
        check=True,
        capture_output=True,
    )
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [*CHARRNN, "sample", "run", "-n", "100000"], cwd=corpus, stdout=full, stderr=subprocess.PIPE, text=True
        )
    assert result.returncode == 1
    assert "No space left on device" in result.stderr and "Traceback" not in result.stderr


def test_run_directory_survives_a_failed_new_run(corpus):
    done = subprocess.run(
        [*CHARRNN, "train", "text.txt", "--out", "run", *TINY, "--steps", "2"],
        cwd=corpus,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0
    before = sorted(p.relative_to(corpus) for p in (corpus / "run").rglob("*"))
    again = subprocess.run(
        [*CHARRNN, "train", "text.txt", "--out", "run", *TINY, "--steps", "2"],
        cwd=corpus,
        capture_output=True,
        text=True,
    )
    assert again.returncode == 1 and "--resume run" in again.stderr
    assert sorted(p.relative_to(corpus) for p in (corpus / "run").rglob("*")) == before


def test_disk_filling_up_during_training_is_one_line_and_keeps_checkpoints(corpus):
    mount = corpus / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        process = start_training(
            corpus, "text.txt", "--out", str(mount / "run"), *TINY, "--steps", "100000", "--eval-every", "20"
        )
        wait_for(lambda: len(committed_steps(mount / "run")) >= 1)
        with open(mount / "filler", "wb", buffering=0) as filler:
            # Keep the disk full until training gives up (orbax frees space as it prunes old steps).
            while process.poll() is None:
                try:
                    filler.write(b"\0" * 4096)
                except OSError:
                    time.sleep(0.01)
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 1, stderr
        errors = [line for line in stderr.splitlines() if line.startswith("charrnn: error")]
        assert len(errors) == 1 and "No space left on device" in errors[0] and "intact" in errors[0]
        # No traceback at all: neither ours nor the leftovers of orbax's and tensorstore's background I/O.
        assert "Traceback" not in stderr and "ERROR:" not in stderr, stderr
        (mount / "filler").unlink()
        assert load(Run(mount / "run"), "latest").params  # the earlier checkpoints still load
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
