"""Data parallelism: several (simulated) devices and hosts must train exactly like one device.

XLA fakes CPU devices only if told before JAX starts, so these tests run their training in fresh
interpreters: tests/multidevice_worker.py with 4 devices, and `charrnn train` as a two-host run
(2 processes × 2 devices on 127.0.0.1) against an in-process single-device run.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import charrnn_in_process
from multidevice_worker import text

from charrnn.config import ModelConfig, TrainConfig
from charrnn.corpus import prepare
from charrnn.errors import UsageError
from charrnn.loop import fit
from charrnn.placement import HEARTBEAT_TIMEOUT, make_placement
from charrnn.runs import Run

WORKER = Path(__file__).with_name("multidevice_worker.py")
CHARRNN = [sys.executable, "-m", "charrnn.cli.main"]
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}  # float32 sums in another order


def fake_devices(count: int, **extra: str) -> dict:
    flags = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), f"--xla_force_host_platform_device_count={count}"]))
    return os.environ | {"XLA_FLAGS": flags} | extra


def on_four_devices(root, kind: str) -> dict:
    env = fake_devices(4, CHARRNN_CACHE=str(root / "cache"))
    result = subprocess.run(
        [sys.executable, str(WORKER), str(root), kind], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    return on_four_devices(tmp_path_factory.mktemp("four"), "attention")


def test_four_devices_give_the_losses_of_one(four_devices):
    one, four = four_devices["one"], four_devices["four"]
    assert sorted(one["loss"]) == sorted(four["loss"]) == [str(step) for step in range(1, 7)]
    assert one["loss"]["1"] != one["loss"]["6"]  # the model moved, so agreement means something
    for kind in ("loss", "val"):
        steps = sorted(one[kind])
        np.testing.assert_allclose([four[kind][s] for s in steps], [one[kind][s] for s in steps], **TOLERANCE)


@pytest.mark.slow  # more programs to compile; the bidirectional model's sharding is the left-to-right one's, twice
def test_a_bidirectional_model_trains_on_four_devices_as_on_one(tmp_path):
    runs = on_four_devices(tmp_path, "bidirectional")
    one, four = runs["one"], runs["four"]
    assert one["loss"]["1"] != one["loss"]["6"] and sorted(one["val"]) == ["3", "6"]
    for kind in ("loss", "val"):
        steps = sorted(one[kind])
        np.testing.assert_allclose([four[kind][s] for s in steps], [one[kind][s] for s in steps], **TOLERANCE)


def test_batch_rows_and_carry_are_split_over_the_devices(four_devices):
    facts = four_devices["sharding"]
    assert facts["devices"] == 4
    shards = sorted(facts["batch_shards"], key=lambda shard: shard["index"])
    assert len({shard["device"] for shard in shards}) == 4  # four different devices...
    for shard in shards:  # ...each holding its own two rows of the global batch
        assert shard["rows"] == facts["full_batch"][shard["index"] : shard["index"] + 2]
    assert facts["carry_devices"] == 4 and facts["carry_shard_shapes"] == [[2, 16]] * 4
    assert facts["memory_shard_shapes"] == [[2, 12, 16]] * 4  # the attention's memory: its streams' rows
    assert facts["key_shard_shapes"] == [[2, 12, 16]] * 4
    assert facts["kernel_fully_replicated"] and facts["kernel_devices"] == 4


def test_a_training_step_on_several_devices_has_one_collective(four_devices):
    """The gradients' all-reduce, and no activations gathered onto every device."""
    for variant, found in four_devices["collectives"].items():
        assert {kind: count for kind, count in found.items() if count} == {"all-reduce": 1}, variant


@pytest.mark.parametrize("resumed, original", [("four_then_one", "four"), ("one_then_four", "one")])
def test_resume_on_another_device_count_continues_the_run(four_devices, resumed, original):
    """Written at step 3 on one device count, continued on the other: steps 4-6 as if never stopped."""
    after, before = four_devices[resumed], four_devices[original]
    assert sorted(after["loss"]) == ["4", "5", "6"]
    for kind in ("loss", "val"):
        steps = sorted(after[kind])
        np.testing.assert_allclose([after[kind][s] for s in steps], [before[kind][s] for s in steps], **TOLERANCE)


def test_a_batch_that_does_not_divide_over_the_devices_is_one_clear_error(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text())
    result = subprocess.run(
        [*CHARRNN, "train", str(corpus), "--batch-size", "6", "--steps", "1"],
        capture_output=True,
        text=True,
        env=fake_devices(4, CHARRNN_CACHE=str(tmp_path / "cache")),
        timeout=120,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (
        "charrnn: error: --batch-size 6 is not divisible by the 4 devices training uses; "
        "use a multiple of 4 or fewer devices with --devices\n"
    )
    assert not (tmp_path / "runs").exists()
    with pytest.raises(UsageError, match="^devices must be between 1 and 1"):
        make_placement(2)  # this process has one device


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


TINY = ["--hidden", "16", "--layers", "1", "--embed", "8", "--dropout", "0.1", "--dtype", "float32"]
BUDGET = ["--batch-size", "8", "--seq-len", "8", "--steps", "6", "--eval-every", "3", "--warmup", "2", "--lr", "1e-2"]


def two_hosts(tmp_path: Path, corpus: Path) -> list[subprocess.CompletedProcess]:
    """`charrnn train` as two processes of one run, 2 simulated devices each; a port taken by someone
    else between our probe and the coordinator's bind is retried with another."""
    for _attempt in range(3):
        port = free_port()
        args = [*CHARRNN, "train", str(corpus), "--out", str(tmp_path / "run"), *TINY, *BUDGET]
        args += ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
        hosts = [
            subprocess.Popen(
                [*args, "--process-id", str(pid)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=fake_devices(2, CHARRNN_CACHE=str(tmp_path / f"cache{pid}"), CHARRNN_NO_COMPILE_CACHE="1"),
            )
            for pid in range(2)
        ]
        try:
            results = [(host.communicate(timeout=300), host.returncode) for host in hosts]
        finally:
            for host in hosts:
                host.kill()
        outcome = [
            subprocess.CompletedProcess(host.args, code, out, err)
            for host, ((out, err), code) in zip(hosts, results, strict=True)
        ]
        if any(code for _, code in results) and any("in use" in err.lower() for (_, err), _ in results):
            continue
        return outcome
    pytest.fail("no free port for the coordinator after 3 attempts")


def test_two_hosts_train_like_one_process(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text())
    hosts = two_hosts(tmp_path, corpus)
    for host in hosts:
        assert host.returncode == 0, host.stderr[-3000:]
    leader, follower = hosts
    assert "data-parallel over 4 devices" in leader.stderr and "stopped (steps) at step 6" in leader.stderr
    assert follower.stdout == "" and "charrnn:" not in follower.stderr, follower.stderr
    assert "step" not in follower.stderr
    run = Run(tmp_path / "run")
    shared = run.read_metrics()
    assert [record["step"] for record in shared] == [3, 6]  # written once, by process 0 alone
    assert not run.lock_path.exists()

    # The same run in this process, on its single device.
    prepared, _ = prepare(str(corpus), val_fraction=0.1)
    model_config = ModelConfig(vocab_size=len(prepared.vocab), layers=1, hidden_size=16, embed_size=8, dropout=0.1)
    train_config = TrainConfig(batch_size=8, seq_len=8, steps=6, eval_every=3, warmup_steps=2, learning_rate=1e-2)
    alone = Run(tmp_path / "alone")
    alone.directory.mkdir()
    for _report in fit(alone, prepared, model_config, train_config):
        pass
    reference = alone.read_metrics()
    for key in ("val_loss", "learning_rate"):
        np.testing.assert_allclose([r[key] for r in shared], [r[key] for r in reference], **TOLERANCE)
    np.testing.assert_allclose(shared[-1]["train_loss"], reference[-1]["train_loss"], **TOLERANCE)


@pytest.mark.parametrize("lost", [0, pytest.param(1, marks=pytest.mark.slow)])  # the coordinator is the harder
def test_a_lost_host_stops_the_other_in_one_line_and_the_run_resumes(tmp_path, lost):
    """kill -9 one of two processes mid-run: the other ends within the heartbeat timeout with one
    line naming the lost one (not JAX's fatal log), and the last complete checkpoint resumes."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text())
    port = free_port()
    args = [*CHARRNN, "train", str(corpus), "--out", str(tmp_path / "run"), *TINY, "--batch-size", "8"]
    args += ["--seq-len", "8", "--steps", "100000", "--eval-every", "5", "--coordinator", f"127.0.0.1:{port}"]
    hosts = [
        subprocess.Popen(
            [*args, "--num-processes", "2", "--process-id", str(pid)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=fake_devices(2, CHARRNN_CACHE=str(tmp_path / f"cache{pid}"), CHARRNN_NO_COMPILE_CACHE="1"),
        )
        for pid in range(2)
    ]
    survivor = hosts[1 - lost]
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "run" / "checkpoints" / "10").is_dir():
            assert all(host.poll() is None for host in hosts) and time.monotonic() < deadline, "no checkpoint 10"
            time.sleep(0.1)
        hosts[lost].kill()
        killed = time.monotonic()
        _, stderr = survivor.communicate(timeout=HEARTBEAT_TIMEOUT + 60)
        waited = time.monotonic() - killed
    finally:
        for host in hosts:
            host.kill()
            host.communicate()
    assert survivor.returncode != 0 and waited < HEARTBEAT_TIMEOUT + 15, (survivor.returncode, waited)
    errors = [line for line in stderr.splitlines() if "error" in line.lower() or "fatal" in line.lower()]
    assert errors == [
        f"charrnn: error: process {1 - lost} of 2: "
        + ("process 0, the coordinator, stopped" if lost == 0 else "process 1 stopped (no heartbeat)")
        + "; this one stops too (the last complete checkpoint is kept: continue the run with --resume)"
    ], stderr
    assert "Traceback" not in stderr and "Check failure" not in stderr and "[Gloo]" not in stderr

    resumed = charrnn_in_process("train", "--resume", tmp_path / "run", "--steps", "30")  # here, on one device
    assert "stopped (steps) at step 30" in resumed.stderr
