"""Run directories: everything one training run produces, in one place.

runs/<corpus stem>/
    config.json     model, training and corpus settings (what `--resume` and `sample` read)
    vocab.json      the vocabulary, in id order
    metrics.jsonl   one JSON line per evaluation
    checkpoints/    orbax checkpoints: the newest few and the best by validation loss
"""

import json
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

    def write_config(self, model: ModelConfig, train: TrainConfig, corpus: dict[str, Any]) -> None:
        data = {"format": 1, "model": model.to_dict(), "train": train.to_dict(), "corpus": corpus}
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
