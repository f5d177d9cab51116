"""Run directories: everything one training run produces, in one place.

runs/<corpus stem>/
    config.json     model, training and corpus settings (what `--resume` and `sample` read)
    vocab.json      the vocabulary, in id order
    metrics.jsonl   one JSON line per evaluation
    checkpoints/    orbax checkpoints: the newest few and the best by validation loss

Every command reads a run through `Run.open` (configuration and vocabulary, checked against each
other) and `Run.read_metrics`: a damaged file is a RunError naming the file and what is wrong.
"""

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charrnn.config import ModelConfig, TrainConfig, json_repr
from charrnn.errors import ConfigError, RunError, UsageError, VocabularyError
from charrnn.paths import runs_dir
from charrnn.vocab import Vocabulary

FORMAT = 1  # the run format this version writes and reads (config.json's "format")
# The settings every format-1 config.json holds. A setting added later is optional when reading (its
# default applies), so that runs written before it keep loading.
FORMAT_1_KEYS = {
    "model": {"vocab_size", "cell", "layers", "hidden_size", "embed_size", "dropout", "dtype"},
    "train": {
        "batch_size", "seq_len", "learning_rate", "min_lr_fraction", "warmup_steps", "grad_clip", "beta2", "steps",
        "epochs", "time_seconds", "patience", "eval_every", "log_every", "keep", "seed", "val_fraction",
        "max_val_chars", "unroll",
    },
}  # fmt: skip
# Settings added since, with the value that runs written before them used (not today's default).
ADDED_KEYS = {
    "model": {
        "recurrent_dropout": 0.0,
        "attention_keys": 0,
        "weight_drop": 0.0,
        "direction_heads": False,
        "direction_weight": 0.0,
    },
    "train": {"ema": 0.0, "val_burn_in": 0, "weight_decay": 0.0, "restart_every": 0},
}
CORPUS_TYPES = {"source": str, "sha256": str, "characters": int}
# Written only by some runs: a corpus of documents (source is then a list of paths), --min-count,
# characters of the vocabulary training never read (charrnn.start.untrained_record).
OPTIONAL_CORPUS_TYPES = {"documents": int, "boundary": str, "min_count": int, "untrained": str, "unseen_share": float}
_HELD: dict[str, int] = {}  # lock files this process holds, and how deeply (nested `Run.lock`)
MAX_FILE_BYTES = 64 << 20  # config.json and vocab.json are far smaller (a vocabulary of every code point: ~13 MB)


@dataclass(frozen=True)
class LoadedRun:
    """A run's files, read and checked: what every command that uses a trained run starts from."""

    run: "Run"
    model: ModelConfig
    train: TrainConfig
    corpus: dict[str, Any]
    vocab: Vocabulary

    def require_left_to_right(self, use: str) -> None:
        """Refuse to `use` (sample, score, serve) a bidirectional model, in one line that says why."""
        require_left_to_right(self.run.directory, self.model, use)


def require_left_to_right(directory: Path, model: ModelConfig, use: str) -> None:
    """A bidirectional model predicts each character from both sides: it defines no probability of
    a text read left to right, so it can neither write nor score one."""
    if model.bidirectional:
        raise UsageError(
            f"{directory} is a bidirectional model: it judges each character from both sides and gives no "
            f"left-to-right probability, so it cannot {use}; use `charrnn check` to find characters that do "
            "not fit, or `charrnn eval` for its cloze loss"
        )


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
        """Hold the run for one training process. The lock is the kernel's (`fcntl.flock` on
        train.lock): it is released when its holder ends, however it ends (kill -9, a crash, a
        reboot), so a lock left behind never blocks anyone, and of several processes that find one
        exactly one gets it. The file names its holder (PID and host) for the message a second
        trainer gets. Nested use in the holding process is allowed (the command locks early,
        `fit` again)."""
        import fcntl

        self.directory.mkdir(parents=True, exist_ok=True)
        key = str(self.lock_path.resolve())
        if key in _HELD:
            _HELD[key] += 1
            try:
                yield
            finally:
                _HELD[key] -= 1
            return
        while True:
            descriptor = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                holder = _holder(self.lock_path)
                raise RunError(f"{self.directory} is being trained by {holder}; wait for it or stop it") from None
            except OSError as error:  # a file system without locks
                os.close(descriptor)
                raise RunError(f"cannot lock {self.lock_path}: {error.strerror or error}") from None
            try:  # a holder releasing the lock removes the file: if it did since we opened it, open anew
                current = os.path.samestat(os.fstat(descriptor), os.stat(self.lock_path))
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(descriptor)
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()} {socket.gethostname()}\n".encode())
        _HELD[key] = 1
        try:
            yield
        finally:
            del _HELD[key]
            self.lock_path.unlink(missing_ok=True)  # removed while still held, so no one locks a dead file
            os.close(descriptor)

    def write_config(
        self, model: ModelConfig, train: TrainConfig, corpus: dict[str, Any], run: dict[str, Any] | None = None
    ) -> None:
        """`run`: facts about the run itself (device, parent...; see charrnn.report.run_section)."""
        data = {"format": FORMAT, "model": model.to_dict(), "train": train.to_dict(), "corpus": corpus}
        if run is not None:
            data["run"] = run
        temporary = self.config_path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
        temporary.replace(self.config_path)

    def open(self) -> LoadedRun:
        """The run's configuration and vocabulary, each checked, and checked against each other."""
        model, train, corpus = self.read_config()
        vocab = self.read_vocab()
        if len(vocab) != model.vocab_size:
            raise RunError(
                f"{self.vocab_path} does not match {self.config_path}: {len(vocab)} characters, "
                f"but the model has a vocabulary of {model.vocab_size}"
            )
        return LoadedRun(self, model, train, corpus, vocab)

    def read_config(self) -> tuple[ModelConfig, TrainConfig, dict[str, Any]]:
        if not self.directory.is_dir():
            what = "does not exist" if not self.directory.exists() else "is not a directory"
            raise RunError(f"{self.directory} is not a charrnn run (it {what})")
        if not self.config_path.exists():
            raise RunError(f"{self.directory} is not a charrnn run (no config.json)")
        data = _read_json(self.config_path)
        damaged = f"{self.config_path} is damaged:"
        if not isinstance(data, dict):
            raise RunError(f"{damaged} not a JSON object but {json_repr(data)}")
        version = data.get("format")
        if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT:
            raise RunError(
                f"{self.config_path} is in run format {version}, written by a newer charrnn; "
                f"this version reads format {FORMAT} (upgrade charrnn to use this run)"
            )
        if version != FORMAT or isinstance(version, bool):
            raise RunError(f'{damaged} "format" must be {FORMAT}, not {json_repr(version)}')
        if unknown := sorted(set(data) - {"format", "model", "train", "corpus", "run"}):
            raise RunError(f"{damaged} unknown key {unknown[0]!r}")
        if not isinstance(data.get("run", {}), dict):
            raise RunError(f'{damaged} "run" must be a JSON object, not {json_repr(data["run"])}')
        configs = []
        for section, config_class in (("model", ModelConfig), ("train", TrainConfig)):
            values = data.get(section)
            if not isinstance(values, dict):
                raise RunError(f'{damaged} "{section}" must be a JSON object, not {json_repr(values)}')
            if missing := sorted(FORMAT_1_KEYS[section] - set(values)):
                raise RunError(f"{damaged} {section}.{missing[0]} is missing")
            try:
                configs.append(config_class.from_dict(ADDED_KEYS[section] | values))
            except ConfigError as error:
                raise RunError(f"{damaged} {section}.{error.field} {error.problem}") from None
        corpus = data.get("corpus")
        if not isinstance(corpus, dict):
            raise RunError(f'{damaged} "corpus" must be a JSON object, not {json_repr(corpus)}')
        if unknown := sorted(set(corpus) - set(CORPUS_TYPES) - set(OPTIONAL_CORPUS_TYPES)):
            raise RunError(f"{damaged} unknown key corpus.{unknown[0]}")
        source = corpus.get("source")
        if isinstance(source, list) and source and all(isinstance(part, str) for part in source):
            corpus = corpus | {"source": source[0]}  # a corpus of documents: check its first path like one
        present = {key: kind for key, kind in OPTIONAL_CORPUS_TYPES.items() if key in corpus}
        for key, kind in (CORPUS_TYPES | present).items():
            value = corpus.get(key)
            least = 1 if key in OPTIONAL_CORPUS_TYPES else 0  # min_count and documents count from 1
            if isinstance(value, bool) or not isinstance(value, kind) or (kind is int and value < least):
                raise RunError(f"{damaged} corpus.{key} must be a {kind.__name__}, not {json_repr(value)}")
        if "boundary" in corpus and len(corpus["boundary"]) != 1:
            raise RunError(f"{damaged} corpus.boundary must be one character, not {json_repr(corpus['boundary'])}")
        if not 0 < corpus.get("unseen_share", 1.0) <= 1:
            raise RunError(f"{damaged} corpus.unseen_share must be in (0, 1], not {json_repr(corpus['unseen_share'])}")
        corpus = corpus | {"source": source}
        return configs[0], configs[1], corpus

    def read_run_section(self) -> dict[str, Any]:
        """config.json's "run" section (device, precision, parent); {} for runs written before it existed."""
        self.read_config()  # the whole file checked first
        section = _read_json(self.config_path).get("run", {})
        return section if isinstance(section, dict) else {}

    def read_vocab(self) -> Vocabulary:
        data = _read_json(self.vocab_path)
        chars = data.get("chars") if isinstance(data, dict) else None
        unknown = data.get("unknown") if isinstance(data, dict) else None
        if (
            not isinstance(chars, list)
            or not set(data) <= {"chars", "unknown"}
            or not all(isinstance(c, str) for c in chars)
            or not isinstance(unknown, str | None)
        ):
            raise RunError(f'{self.vocab_path} is damaged: not a JSON object {{"chars": [characters]}}')
        if any(0xD800 <= ord(c) <= 0xDFFF for c in chars if len(c) == 1):
            raise RunError(f"{self.vocab_path} is damaged: it lists a lone surrogate, which is not a character")
        # Code-point order, except that a run continued on new text (--init-from) appends its new
        # characters and a --min-count vocabulary ends with its unknown symbol.
        try:
            return Vocabulary(tuple(chars), unknown=unknown)
        except VocabularyError as error:
            raise RunError(f"{self.vocab_path} is damaged: {error}") from None

    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a+", encoding="utf-8") as file:
            if file.tell() > 0:  # a line cut short by a crash must not swallow the next record
                file.seek(file.tell() - 1)
                last = file.read(1)
                if last != "\n":
                    file.write("\n")
            file.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """The records of metrics.jsonl, oldest first; a damaged line is a RunError naming it."""
        if not self.metrics_path.exists():
            return []
        try:
            lines = self.metrics_path.read_bytes().split(b"\n")
        except OSError as error:
            raise RunError(f"cannot read {self.metrics_path}: {error.strerror or error}") from error
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
            except ValueError:
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise RunError(f"{self.metrics_path} is damaged: line {number} is not a metrics record")
            records.append(record)
        return records


def _read_json(path: Path) -> Any:
    """The JSON value in a run's file; every way it can fail is a RunError naming the file."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise RunError(f"{path} is missing") from None
    except IsADirectoryError:
        raise RunError(f"{path} is damaged: a directory, not a file") from None
    except PermissionError:
        raise RunError(f"{path} is not readable (permission denied)") from None
    except OSError as error:
        raise RunError(f"{path} cannot be read: {error.strerror or error}") from None
    if len(data) > MAX_FILE_BYTES:
        raise RunError(f"{path} is damaged: larger than {MAX_FILE_BYTES >> 20} MB")
    if not data.strip():
        raise RunError(f"{path} is damaged: it is empty")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise RunError(f"{path} is damaged: not UTF-8 text (bad byte at offset {error.start})") from None
    except ValueError as error:
        detail = str(error).split(" (char ")[0]  # "Expecting value: line 1 column 1"
        raise RunError(f"{path} is damaged: not valid JSON ({detail})") from None
    except RecursionError:
        raise RunError(f"{path} is damaged: nested too deeply to be a charrnn file") from None


def _holder(path: Path) -> str:
    """Who holds a run's lock ("process 4242", "process 4242 on node7"): the kernel's word where it
    keeps one (/proc/locks names the PID that holds a lock on this file; the file's own text can be
    a dead holder's for the moment after a new one took the lock), else what the file says."""
    if (pid := _local_lock_holder(path)) is not None:
        return f"process {pid}"
    time.sleep(0.05)  # the holder writes its name just after it locks
    try:
        pid, host = (path.read_text().split() + ["", ""])[:2]
    except OSError:
        pid, host = "", ""
    if not pid.isdigit():
        return "another process"
    return f"process {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")


def _local_lock_holder(path: Path) -> int | None:
    """The PID holding a flock on `path` according to Linux's /proc/locks, or None (another system,
    or a holder on another host of a network file system)."""
    try:
        info = path.stat()
        device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            for line in locks:  # "1: FLOCK  ADVISORY  WRITE 4242 fd:01:123456 0 EOF"
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == device and fields[4].isdigit():
                    return int(fields[4])
    except OSError:
        pass
    return None


def fresh_run_dir(stem: str, root: Path | None = None) -> Path:
    """``runs/<stem>``, or ``runs/<stem>-2``, ``-3``... if taken: a new run never overwrites an old one."""
    root = root or runs_dir()
    candidate, n = root / stem, 1
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
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
