"""What a run is and how it went, as plain JSON-able dicts: read by `charrnn info`, `runs` and `plot`.

Everything is read from the run directory's files (config.json, vocab.json, metrics.jsonl and the
names of the checkpoint directories), never from the checkpoints themselves: no JAX, so listing a
hundred runs is instant. All reading of a run goes through `Run`'s methods in `read_run`, the one
place to switch to a common run loader. Runs written before a field was recorded show it as None
("unknown").
"""

import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from charrnn.config import ModelConfig
from charrnn.errors import RunError
from charrnn.paths import runs_dir
from charrnn.runs import Run

VOCAB_PREVIEW = 60  # characters of the vocabulary shown by `info`


def run_section(model_config: ModelConfig, parent: Path | None = None) -> dict[str, Any]:
    """config.json's "run" section for a new run: where it trains and what it continues."""
    import jax

    device = jax.devices()[0]
    return {
        "created": round(time.time(), 3),
        "platform": jax.default_backend(),  # cpu | gpu | tpu
        "device": getattr(device, "device_kind", str(device)),
        "device_count": jax.device_count(),
        "precision": model_config.dtype,
        "parent": str(parent.absolute()) if parent is not None else None,
    }


def read_run(run: Run) -> tuple[ModelConfig, Any, dict, dict, Any, list[dict]]:
    """(model, train, corpus, run section, vocabulary, metrics) of `run`; one line if damaged."""
    model_config, train_config, corpus = run.read_config()
    section = run.read_run_section()
    vocab = run.read_vocab()
    try:
        metrics = run.read_metrics()
    except (OSError, ValueError) as error:
        raise RunError(f"{run.metrics_path} is damaged: {error}") from error
    return model_config, train_config, corpus, section, vocab, metrics


def checkpoint_steps(run: Run) -> list[int]:
    """Steps of the finished checkpoints (orbax's temporary directories are not numbers)."""
    if not run.checkpoints_dir.is_dir():
        return []
    return sorted(int(p.name) for p in run.checkpoints_dir.iterdir() if p.name.isdigit() and p.is_dir())


def last_modified(run: Run) -> float:
    paths = [run.config_path, run.metrics_path, run.checkpoints_dir]
    return max(p.stat().st_mtime for p in paths if p.exists())


def _bits(nats: float | None) -> float | None:
    return None if nats is None else nats / math.log(2)


def preview(chars: tuple[str, ...], limit: int = VOCAB_PREVIEW) -> str:
    """The first `limit` characters, control characters escaped (``\\n``, ``\\x1e``)."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in chars[:limit])
    return shown + ("…" if len(chars) > limit else "")


def describe(run: Run) -> dict[str, Any]:
    """Everything `charrnn info` shows about `run`."""
    model, train, corpus, section, vocab, metrics = read_run(run)
    evaluated = [m for m in metrics if isinstance(m.get("val_loss"), int | float)]
    best = min(evaluated, key=lambda m: m["val_loss"]) if evaluated else None
    last = evaluated[-1] if evaluated else None
    losses = {m["step"]: m["val_loss"] for m in evaluated}
    checkpoints = checkpoint_steps(run)
    step = max([m.get("step", 0) for m in metrics] + checkpoints + [0])
    windows_per_epoch = step / last["epoch"] if last and last.get("epoch") else None
    chars_seen = metrics[-1].get("chars_seen") if metrics else None
    if chars_seen is None and metrics:  # older runs: every step reads batch × seq_len characters
        chars_seen = metrics[-1].get("step", 0) * train.batch_size * train.seq_len
    return {
        "run": str(run.directory),
        "name": run.directory.name,
        "model": model.to_dict(),
        "train": train.to_dict(),
        "corpus": corpus,
        "parameters": model.parameter_count(),
        "vocab_size": len(vocab),
        "vocab_preview": preview(vocab.chars),
        "steps": step,
        "epochs": round(step / windows_per_epoch, 4) if windows_per_epoch else None,
        "chars_seen": chars_seen,
        "best_val_loss": best["val_loss"] if best else None,
        "best_val_bits_per_char": _bits(best["val_loss"]) if best else None,
        "best_step": best["step"] if best else None,
        "last_val_loss": last["val_loss"] if last else None,
        "last_val_bits_per_char": _bits(last["val_loss"]) if last else None,
        "platform": section.get("platform"),
        "device": section.get("device"),
        "precision": section.get("precision", model.dtype),
        "training_seconds": metrics[-1].get("elapsed") if metrics else None,
        "parent": section.get("parent"),
        "checkpoints": [
            {"step": s, "val_loss": losses.get(s), "best": best is not None and s == best["step"]} for s in checkpoints
        ],
        "last_modified": datetime.fromtimestamp(last_modified(run), UTC).isoformat(timespec="seconds"),
    }


def list_runs(root: Path | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """One summary row per run under `root` (default ./runs), newest first, and warnings about
    directories that look like runs but cannot be read."""
    root = root or runs_dir()
    if not root.is_dir():
        raise RunError(f"{root} is not a directory of runs")
    rows, warnings = [], []
    modified: dict[str, float] = {}
    for directory in sorted(p for p in root.iterdir() if (p / "config.json").exists()):
        try:
            info = describe(Run(directory))
        except RunError as error:
            warnings.append(str(error))
            continue
        model = info["model"]
        modified[info["run"]] = last_modified(Run(directory))
        rows.append(
            {
                "name": info["name"],
                "run": info["run"],
                "cell": model["cell"],
                "size": f"{model['layers']}×{model['hidden_size']}",
                "parameters": info["parameters"],
                "steps": info["steps"],
                "best_val_loss": info["best_val_loss"],
                "last_modified": info["last_modified"],
            }
        )
    rows.sort(key=lambda row: modified[row["run"]], reverse=True)
    return rows, warnings
