"""Run directories: everything one training run produces, in one place.

runs/<corpus stem>/
    config.json     model, training and corpus settings (what `--resume` and `sample` read)
    vocab.json      the vocabulary, in id order
    metrics.jsonl   one JSON line per evaluation
    checkpoints/    orbax checkpoints: the newest few and the best by validation loss
"""

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charrnn.config import ModelConfig, TrainConfig
from charrnn.errors import RunError
from charrnn.paths import runs_dir
from charrnn.vocab import Vocabulary


@dataclass(frozen=True)
class Run:
    directory: Path

    @property
    def config_path(self) -> Path:
        return self.directory / "config.json"

    @property
    def vocab_path(self) -> Path:
        return self.directory / "vocab.json"

    @property
    def metrics_path(self) -> Path:
        return self.directory / "metrics.jsonl"

    @property
    def checkpoints_dir(self) -> Path:
        return self.directory / "checkpoints"

    def exists(self) -> bool:
        return self.config_path.exists()

    @property
    def lock_path(self) -> Path:
        return self.directory / "train.lock"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run for one training process. A second one is refused with the owner's PID; a
        lock left by a process that no longer exists (kill -9, power loss) is taken over."""
        self.directory.mkdir(parents=True, exist_ok=True)
        owner = f"{os.getpid()} {socket.gethostname()}"
        for _ in range(2):
            try:
                descriptor = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if _read_lock(self.lock_path) == owner:  # this process holds it already (nested use)
                    yield
                    return
                if _lock_is_live(self.lock_path):
                    pid = self.lock_path.read_text().split()[0]
                    raise RunError(
                        f"{self.directory} is being trained by process {pid}; wait for it or stop it "
                        f"(if no such process is running, delete {self.lock_path})"
                    ) from None
                self.lock_path.unlink(missing_ok=True)  # stale: its owner is gone
                continue
            with os.fdopen(descriptor, "w") as file:
                file.write(owner + "\n")
            break
        else:
            raise RunError(f"could not lock {self.directory}; delete {self.lock_path} if no training is running")
        try:
            yield
        finally:
            self.lock_path.unlink(missing_ok=True)

    def write_config(
        self, model: ModelConfig, train: TrainConfig, corpus: dict[str, Any], run: dict[str, Any] | None = None
    ) -> None:
        """`run`: facts about the run itself (device, parent...; see charrnn.runinfo.run_section)."""
        data = {"format": 1, "model": model.to_dict(), "train": train.to_dict(), "corpus": corpus}
        if run is not None:
            data["run"] = run
        temporary = self.config_path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
        temporary.replace(self.config_path)

    def read_config(self) -> tuple[ModelConfig, TrainConfig, dict[str, Any]]:
        if not self.exists():
            raise RunError(f"{self.directory} is not a charrnn run (no config.json)")
        try:
            data = json.loads(self.config_path.read_text(encoding="utf-8"))
            return ModelConfig.from_dict(data["model"]), TrainConfig.from_dict(data["train"]), data["corpus"]
        except (ValueError, KeyError, TypeError) as error:
            raise RunError(f"{self.config_path} is damaged: {error}") from error

    def read_run_section(self) -> dict[str, Any]:
        """config.json's "run" section (device, precision, parent); {} for runs written before it existed."""
        try:
            section = json.loads(self.config_path.read_text(encoding="utf-8")).get("run")
        except (OSError, ValueError, AttributeError) as error:
            raise RunError(f"{self.config_path} is missing or damaged") from error
        return section if isinstance(section, dict) else {}

    def read_vocab(self) -> Vocabulary:
        try:
            return Vocabulary.load(self.vocab_path)
        except (OSError, ValueError, KeyError) as error:
            raise RunError(f"{self.vocab_path} is missing or damaged") from error

    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        lines = self.metrics_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]


def _read_lock(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _lock_is_live(path: Path) -> bool:
    """Whether the process named in a lock file still runs (on this host; other hosts are trusted)."""
    try:
        pid_text, host = (path.read_text().split() + ["", ""])[:2]
        pid = int(pid_text)
    except (OSError, ValueError):
        return False  # unreadable or half-written: its writer died before finishing it
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)  # PermissionError means it exists, under another user
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def fresh_run_dir(stem: str, root: Path | None = None) -> Path:
    """``runs/<stem>``, or ``runs/<stem>-2``, ``-3``... if taken: a new run never overwrites an old one."""
    root = root or runs_dir()
    candidate, n = root / stem, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = root / f"{stem}-{n}"
    return candidate


def latest_run(root: Path | None = None) -> Run:
    """The run under `root` (default ./runs) whose training wrote most recently."""
    root = root or runs_dir()
    runs = [Run(path) for path in root.glob("*") if (path / "config.json").exists()] if root.is_dir() else []
    if not runs:
        raise RunError(f"no trained run found under {root.absolute()}; train one with `charrnn train FILE`")

    def last_write(run: Run) -> float:
        paths = [run.config_path, run.metrics_path, run.checkpoints_dir]
        return max(p.stat().st_mtime for p in paths if p.exists())

    return max(runs, key=last_write)
