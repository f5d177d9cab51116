"""The installed `charrnn` command re-executes computing commands with glibc's huge-page tunable."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import periodic_text

from charrnn.cli.launch import TUNABLE, hugepage_environment

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
ON_REQUEST = sys.platform == "linux" and THP.exists() and "[madvise]" in THP.read_text()


def test_never_overrides_the_users_choice():
    assert hugepage_environment({"GLIBC_TUNABLES": f"{TUNABLE}=0"}) is None
    assert hugepage_environment({"CHARRNN_NO_HUGEPAGES": "1"}) is None


@pytest.mark.skipif(not ON_REQUEST, reason="transparent huge pages are not in 'madvise' mode here")
def test_adds_the_tunable_to_existing_ones():
    environment = hugepage_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "HOME": "/h"})
    assert environment == {"GLIBC_TUNABLES": f"glibc.malloc.arena_max=2:{TUNABLE}=1", "HOME": "/h"}
    assert hugepage_environment({})["GLIBC_TUNABLES"] == f"{TUNABLE}=1"


@pytest.mark.skipif(not ON_REQUEST, reason="transparent huge pages are not in 'madvise' mode here")
def test_a_computing_command_runs_with_the_tunable_and_keeps_its_arguments(tmp_path):
    """The process (same PID after the exec) ends up with the tunable and its original arguments."""
    (tmp_path / "text.txt").write_text(periodic_text(3000))
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    command = [sys.executable, "-m", "charrnn.cli.launch", "train", "text.txt", "--hidden", "8", "--steps", "100000"]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc = Path(f"/proc/{process.pid}")
        deadline = time.monotonic() + 30
        while f"{TUNABLE}=1".encode() not in (proc / "environ").read_bytes():
            assert time.monotonic() < deadline and process.poll() is None, "never re-executed"
            time.sleep(0.02)
        assert (proc / "cmdline").read_bytes().decode().split("\0")[1:-1] == command[1:]
    finally:
        process.terminate()
        process.communicate(timeout=60)


def test_errors_are_unchanged_through_the_launcher(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "charrnn.cli.launch", "train", "missing.txt"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert done.stderr == "charrnn: error: corpus missing.txt does not exist\n"
