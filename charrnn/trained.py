"""A trained run, loaded: the one type behind `charrnn.load(RUN)` and the commands `sample`,
`score` and `eval`, built by one loader (`load`), so that the API and the command line cannot
disagree (a run trained on documents, say, resets its state and stops at their boundary in both).

    >>> model = charrnn.load("runs/tinyshakespeare")
    >>> model.sample(200, prime="ROMEO:", temperature=0.8, seed=1)
    >>> [s.bits_per_char for s in model.score(["To be, or not to be", "be ot ,ro ton ot eB"])]
    >>> model.eval().bits_per_char      # the validation split, as training measured it
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from charrnn.config import ModelConfig, SampleOptions, TrainConfig, parse_checkpoint
from charrnn.errors import RunError, Warn
from charrnn.runs import Run, latest_run, require_left_to_right
from charrnn.scoring import EvalResult, LineScore, evaluate_ids, evaluate_text, score_document, score_lines
from charrnn.vocab import Vocabulary

if TYPE_CHECKING:
    from charrnn.checking import Checker, Finding


def open_run(directory: str | Path | None = None) -> Run:
    """The run in `directory` (default: the one trained most recently under ./runs), checked to be one."""
    run = Run(Path(directory)) if directory is not None else latest_run()
    if not run.exists():
        raise RunError(f"{run.directory} is not a charrnn run (no config.json)")
    return run


def load(
    run: str | Path | Run | None = None,
    checkpoint: str | int = "best",
    *,
    warn: Warn = lambda _: None,
) -> "TrainedModel":
    """A trained run: its files, checked (`Run.open`), and the parameters (only: no optimizer state
    is read, nothing on disk changes) of its best (lowest validation loss) or latest checkpoint, or
    of the checkpoint at step `checkpoint`; for a run that averaged its weights, the average, which
    is what it validated. A damaged best or latest checkpoint is skipped with a `warn`ing for the
    newest one that loads; a step asked for by number must load itself."""
    from charrnn.checkpoint import CheckpointStore
    from charrnn.model import parameter_shapes

    which = parse_checkpoint(checkpoint)
    run = run if isinstance(run, Run) else open_run(run)
    loaded = run.open()
    no_checkpoint = RunError(f"{run.directory} has no checkpoint yet; let training reach its first evaluation")
    if not run.checkpoints_dir.exists():
        raise no_checkpoint
    store = CheckpointStore(run.checkpoints_dir, keep=loaded.train.keep, create=False)
    try:
        steps, unreadable = store.steps(), store.unreadable
        if not steps and not unreadable:
            raise no_checkpoint
        if isinstance(which, int):
            if which in unreadable:
                raise RunError(f"checkpoint {which} is damaged ({unreadable[which]}) in {run.directory}")
            if which not in steps:
                listed = ", ".join(str(s) for s in sorted(steps))
                raise RunError(f"{run.directory} has no checkpoint at step {which}; it has {listed}")
            candidates = [which]
        else:
            preferred = store.best_step() if which == "best" else None
            preferred = max(steps, default=None) if preferred not in steps else preferred
            candidates = [preferred, *sorted((s for s in steps if s != preferred), reverse=True)] if steps else []
        field = "ema" if loaded.train.ema else "params"  # the weights the run was validated with

        def read(step: int) -> Any:
            return store.restore_params(step, parameter_shapes(loaded.model), field)

        if isinstance(which, int):
            try:
                step, params = which, read(which)
            except Exception as error:  # any failure to read means "damaged"
                raise RunError(f"checkpoint {which} is damaged ({type(error).__name__}) in {run.directory}") from None
        else:
            step, params, notices = store.first_readable(candidates, read)
            for notice in notices:
                warn(notice)
    finally:
        store.close()
    return TrainedModel(run, loaded.model, loaded.train, loaded.corpus, loaded.vocab, params, step)


@dataclass(frozen=True)
class TrainedModel:
    """A run's configuration, vocabulary and the parameters of one of its checkpoints (`load`)."""

    run: Run
    model_config: ModelConfig
    train_config: TrainConfig
    corpus_info: dict[str, Any]
    vocab: Vocabulary
    params: Any
    step: int  # the checkpoint the parameters came from

    @property
    def boundary(self) -> str | None:
        """The character between documents, for a run trained on documents (else None)."""
        return self.corpus_info.get("boundary") if self.corpus_info.get("documents") else None

    def require_left_to_right(self, use: str) -> None:
        """Refuse to `use` (sample, score, serve) a bidirectional model (see `runs.require_left_to_right`)."""
        require_left_to_right(self.run.directory, self.model_config, use)

    def __repr__(self) -> str:
        c: ModelConfig = self.model_config
        return f"<charrnn model {self.run.directory}: {c.layers}×{c.hidden_size} {c.cell}, checkpoint {self.step}>"

    # -- writing -----------------------------------------------------------------------------
    def sample_stream(
        self,
        length: int = 1000,
        *,
        prime: str = "",
        temperature: float = 0.8,
        top_k: int = 0,
        top_p: float = 1.0,
        num: int = 1,
        seed: int = 0,
        stop: Iterable[str] = (),
        stop_at_boundary: bool = True,
    ) -> Iterator[list[str]]:
        """Chunks of generated text as they are ready: a list of `num` strings per chunk. Each sample
        ends at the first `stop` text it writes (kept); a run trained on documents starts a new one,
        resets its state where it writes their boundary, and ends there (not kept) unless
        `stop_at_boundary` is false."""
        from charrnn.sampling import sample_stream

        self.require_left_to_right("sample")
        options = SampleOptions(temperature=temperature, top_k=top_k, top_p=top_p)
        self.vocab.encode(prime)  # names unknown characters
        return sample_stream(
            self.params,
            self.model_config,
            self.vocab,
            length=length,
            prime=prime,
            options=options,
            num=num,
            seed=seed,
            stop=tuple(stop),
            boundary=self.boundary,
            stop_at_boundary=stop_at_boundary,
        )

    def sample(self, length: int = 1000, *, prime: str = "", num: int = 1, **options: Any) -> str | list[str]:
        """`length` generated characters after `prime` (not included); a list of `num` when num > 1.
        Options: temperature (0.8), top_k, top_p, seed (0), stop, stop_at_boundary (see `sample_stream`)."""
        pieces = list(self.sample_stream(length, prime=prime, num=num, **options))
        texts = ["".join(chunk[i] for chunk in pieces) for i in range(num)]
        return texts[0] if num == 1 else texts

    # -- judging -----------------------------------------------------------------------------
    def score_iter(
        self, lines: Iterable[str], *, context: bool = False, unknown: str = "error", details: bool = False
    ) -> Iterator[LineScore]:
        """Score each line (a trailing newline is dropped; the line's newline is always predicted),
        in order, as soon as each is done. `context` reads the lines as one text, state carried;
        `unknown` is "error" or "skip"; `details` keeps per-character probabilities and alternatives."""
        self.require_left_to_right("score")
        if isinstance(lines, str):
            lines = lines.split("\n")[:-1] if lines.endswith("\n") else lines.split("\n")
        scorer = score_document if context else score_lines
        return scorer(self.params, self.model_config, self.vocab, lines, unknown=unknown, details=details)

    def score(
        self, lines: Iterable[str], *, context: bool = False, unknown: str = "error", details: bool = False
    ) -> list[LineScore]:
        """The `LineScore` of every line (see `score_iter`); a string is split into its lines."""
        return list(self.score_iter(lines, context=context, unknown=unknown, details=details))

    def checker(self) -> "Checker":
        """A `Checker` of texts with this model (a bidirectional one)."""
        from charrnn.checking import Checker

        info = self.corpus_info
        return Checker(
            self.params,
            self.model_config,
            self.vocab,
            boundary=self.boundary,
            untrained=info.get("untrained", ""),
            unseen_share=info.get("unseen_share", 0.0),
        )

    def check(self, text: str, threshold: float | None = None, *, repeated: bool = False) -> "list[Finding]":
        """The characters of `text` that do not fit, with the edit that fits best (charrnn.checking)."""
        return self.checker().check(text, threshold, repeated=repeated)

    def eval(self, text: str | None = None, *, streams: int = 1, unknown: str = "error") -> EvalResult:
        """The loss over `text` read with carried state (its first character predicted after a
        newline), or with no text over the run's validation split exactly as training measured it.
        For a bidirectional model, the cloze loss: each character predicted from both sides."""
        if text is None:
            return self.eval_validation()
        return evaluate_text(self.params, self.model_config, self.vocab, text, streams=streams, unknown=unknown)

    def eval_validation(self) -> EvalResult:
        """Training's validation pass: the same split, streams, window length, burn-in and character cap."""
        tc: TrainConfig = self.train_config
        reset_id = self.vocab.index.get(self.boundary) if self.boundary else None
        ids = self.validation_ids()
        return evaluate_ids(self.params, self.model_config, ids, tc.batch_size, tc.seq_len, reset_id, tc.val_burn_in)

    def validation_ids(self) -> np.ndarray:
        """The run's validation split (its first `max_val_chars`), from the preparation cache or by
        preparing the run's corpus again (which must not have changed)."""
        from charrnn.corpus import find_prepared, prepare, rereadable

        tc: TrainConfig = self.train_config
        digest, source = self.corpus_info.get("sha256", ""), self.corpus_info.get("source", "")
        min_count = self.corpus_info.get("min_count", 1)
        prepared = find_prepared(digest, tc.val_fraction, min_count=min_count, vocab=self.vocab) if digest else None
        if prepared is None:
            where = f"{self.run.directory}'s validation split"
            sources = [source] if isinstance(source, str) else list(source)  # one text, or documents
            if not source or not all(rereadable(s) for s in sources):
                origin = "standard input" if source in ("-", "") else "a pipe"
                raise RunError(f"{where} came from {origin} and is no longer cached; give a FILE to evaluate")
            if gone := [s for s in sources if s != "pydoc" and not Path(s).exists()]:
                raise RunError(f"{where} needs its corpus {gone[0]}, which is gone; give a FILE to evaluate")
            # The run's own vocabulary (a run continued from a parent's extends the text's own).
            base = self.vocab if min_count == 1 else None
            prepared, _ = prepare(source, val_fraction=tc.val_fraction, min_count=min_count, base_vocab=base)
            if prepared.stats["sha256"] != digest:
                raise RunError(f"{where} cannot be rebuilt: the corpus {source} has changed since training")
        return np.asarray(prepared.val[: tc.max_val_chars])

    def recorded_val_loss(self) -> float | None:
        """The validation loss training recorded in metrics.jsonl for this checkpoint's step, if any."""
        try:
            records = self.run.read_metrics()
        except RunError:  # a damaged metrics.jsonl: nothing recorded to compare with
            return None
        losses = [r.get("val_loss") for r in records if r.get("step") == self.step]
        return losses[-1] if losses else None
