"""Random bytes and random option values: every outcome is success or a clean error, never a traceback."""

import math

import pytest
from conftest import periodic_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from charrnn.cli.main import app
from charrnn.errors import CharrnnError

FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


def clean(result) -> bool:
    """Success, a CharrnnError (printed as one line by `main`), or a usage error from the parser."""
    if result.exit_code == 0:
        return True
    if result.exception is None or isinstance(result.exception, SystemExit):
        return result.exit_code in (1, 2)
    return isinstance(result.exception, CharrnnError)


@given(data=st.binary(max_size=300))
@FUZZ
def test_prep_on_random_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "random.bin"
    path.write_bytes(data)
    for extra in ([], ["--errors", "replace"]):
        result = CliRunner().invoke(app, ["prep", str(path), *extra])
        assert clean(result), repr(result.exception)


numbers = st.one_of(
    st.integers(min_value=-3, max_value=4), st.sampled_from(["0", "-1", "nan", "inf", "1e9", "x", "", "3.5"])
)
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from(["nan", "-0", "1e-9", "abc"])
)


@given(
    hidden=numbers,
    layers=numbers,
    seq_len=numbers,
    batch=numbers,
    lr=floats,
    dropout=floats,
    cell=st.sampled_from(["lstm", "gru", "rnn", "LSTM", "transformer", ""]),
    time=st.sampled_from(["1s", "0", "-5m", "1h30m", "soon", "1.5", "m"]),
)
@FUZZ
def test_train_with_random_options(tmp_path_factory, hidden, layers, seq_len, batch, lr, dropout, cell, time):
    home = tmp_path_factory.mktemp("train")
    (home / "text.txt").write_text(periodic_text(600))
    args = [
        "train",
        str(home / "text.txt"),
        "--out",
        str(home / "run"),
        "--steps",
        "1",
        "--embed",
        "4",
        "--hidden",
        str(hidden),
        "--layers",
        str(layers),
        "--seq-len",
        str(seq_len),
        "--batch-size",
        str(batch),
        "--lr",
        str(lr),
        "--dropout",
        str(dropout),
        "--cell",
        cell,
        "--time",
        time,
    ]
    result = CliRunner().invoke(app, args)
    assert clean(result), repr(result.exception)
    if isinstance(lr, float) and (math.isnan(lr) or lr <= 0):
        assert result.exit_code != 0


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("sample")
    (home / "text.txt").write_text(periodic_text(1000))
    result = CliRunner().invoke(
        app,
        [
            "train",
            str(home / "text.txt"),
            "--out",
            str(home / "run"),
            "--steps",
            "2",
            "--hidden",
            "8",
            "--layers",
            "1",
            "--embed",
            "4",
            "-b",
            "2",
            "-t",
            "8",
        ],
    )
    assert result.exit_code == 0, result.output
    return home / "run"


@given(
    temp=floats,
    top_p=floats,
    top_k=numbers,
    length=st.integers(min_value=-2, max_value=40),
    prime=st.text(max_size=8),
    num=st.integers(min_value=-1, max_value=3),
)
@FUZZ
def test_sample_with_random_options(sample_run, temp, top_p, top_k, length, prime, num):
    args = [
        "sample",
        str(sample_run),
        "--temp",
        str(temp),
        "--top-p",
        str(top_p),
        "--top-k",
        str(top_k),
        "-n",
        str(length),
        "--num",
        str(num),
        "--seed",
        "0",
    ]
    if prime:
        args += ["--prime", prime]
    result = CliRunner().invoke(app, args)
    assert clean(result), repr(result.exception)
