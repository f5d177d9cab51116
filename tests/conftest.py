"""Test isolation: every test gets its own cache and working directory, never the user's."""

import io
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

os.environ.setdefault("CHARRNN_PLAIN", "1")

# `python -m pytest` puts the working directory first on sys.path: in the repository, the source
# tree, whose `charrnn` lacks the `charrnn.cli` that an install maps from `cli/`. The tests test the
# installed package (an editable install maps both), so the source tree comes off the path.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _ROOT]


def pytest_configure(config):
    """Quick compiles, and one XLA compilation cache for the whole session, in-process and in every
    `charrnn` the tests start: the same tiny models are compiled once, not once per test (each
    test's CHARRNN_CACHE is its own, so the cache would otherwise start empty every time)."""
    # The tests' models are tiny, so their time goes to compiling, not running: LLVM's optimisation
    # passes are skipped (XLA's own graph optimisations still run). Results are compared with
    # references and tolerances, never with bits an optimised build produced.
    if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        config.charrnn_xla_cache = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="charrnn-xla-")


def pytest_unconfigure(config):
    if directory := getattr(config, "charrnn_xla_cache", None):
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARRNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def periodic_text(length: int = 4000) -> str:
    """A text a small model can learn perfectly: a fixed 13-character phrase repeated."""
    phrase = "hello world, "
    return (phrase * (length // len(phrase) + 1))[:length]


def charrnn_in_process(*args: str, cwd=None, input: str | None = None, check: bool = True):
    """`charrnn ARGS` as `charrnn.cli.main.main` runs it, in this process: the exit status and what
    a real process would print on stdout and stderr, without starting Python and JAX again, and with
    the programs earlier tests compiled at hand. For what needs no process of its own: signals,
    pipes, several devices and the re-executed start-up are tested with real processes."""
    from charrnn.cli.main import main

    saved = sys.argv, sys.stdin, sys.stdout, sys.stderr, os.getcwd(), os.environ.get("COLUMNS")
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["charrnn", *map(str, args)]
    sys.stdin = io.TextIOWrapper(io.BytesIO((input or "").encode("utf-8")), encoding="utf-8")
    sys.stdout, sys.stderr = out, err
    os.environ["COLUMNS"] = "200"
    code = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        main()
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    finally:
        sys.argv, sys.stdin, sys.stdout, sys.stderr, directory, columns = saved
        os.chdir(directory)
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns
    result = subprocess.CompletedProcess(["charrnn", *args], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"exit {code}\n{result.stderr}")
    return result
