"""Test isolation: every test gets its own cache and working directory, never the user's."""

import os

import pytest

os.environ.setdefault("CHARRNN_PLAIN", "1")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARRNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def periodic_text(length: int = 4000) -> str:
    """A text a small model can learn perfectly: a fixed 13-character phrase repeated."""
    phrase = "hello world, "
    return (phrase * (length // len(phrase) + 1))[:length]
