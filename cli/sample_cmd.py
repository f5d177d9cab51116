"""`charrnn sample [RUN]`: stream generated text to stdout, and nothing else."""

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from charrnn.errors import RunError, UsageError

from . import console


def sample(
    run_dir: Annotated[
        Path | None,
        typer.Argument(help="Run directory. [default: the run trained most recently under ./runs]", show_default=False),
    ] = None,
    temp: Annotated[float, typer.Option("--temp", help="Temperature; 0 picks the most likely character.")] = 0.8,
    length: Annotated[int, typer.Option("--length", "-n", help="Characters to generate (after the prime).")] = 1000,
    prime: Annotated[str | None, typer.Option(help="Text to warm the state on; printed first.")] = None,
    prime_file: Annotated[Path | None, typer.Option(help="Read the prime text from this file.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed. [default: a new one each call]")] = None,
    top_k: Annotated[int, typer.Option(help="Sample only among the k most likely characters (0 = all).")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling: the smallest set with this much probability.")] = 1.0,
    num: Annotated[int, typer.Option("--num", help="Independent samples, generated as one batch.")] = 1,
    separator: Annotated[
        str, typer.Option(help="Printed between samples (backslash escapes \\n, \\t, \\\\ understood).")
    ] = "\\n---\\n",
    stop: Annotated[
        list[str] | None,
        typer.Option(
            "--stop",
            help="End each sample at the first occurrence of this text, which is printed (repeatable; "
            "escapes such as \\n understood: --stop '\\n\\n' ends at a blank line).",
            show_default=False,
        ),
    ] = None,
    checkpoint: Annotated[str, typer.Option(help="Which checkpoint: best or latest.")] = "best",
    boundary_stop: Annotated[
        bool,
        typer.Option(
            "--boundary-stop/--no-boundary-stop",
            help="For a run trained on documents: end each sample where its document ends (the U+001E boundary, "
            "not printed), or go on into new documents (the boundary printed as it is).",
        ),
    ] = True,
    skip_unknown: Annotated[
        bool, typer.Option("--skip-unknown", help="Drop prime characters the model does not know, not fail.")
    ] = False,
) -> None:
    """Generate text from a trained run. Only the text goes to stdout."""
    if length < 0:
        raise UsageError(f"--length must be >= 0, not {length}")
    if num < 1:
        raise UsageError(f"--num must be positive, not {num}")
    if checkpoint not in ("best", "latest"):
        raise UsageError(f"--checkpoint must be best or latest, not {checkpoint!r}")
    if prime is not None and prime_file is not None:
        raise UsageError("give --prime or --prime-file, not both")
    if prime_file is not None:
        try:
            prime = prime_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"cannot read --prime-file {prime_file}: {error}") from error
    prime = prime or ""
    from .options import unescape

    separator = unescape(separator)
    stops = tuple(unescape(text) for text in stop or ())
    if "" in stops:
        raise UsageError("--stop must not be empty")

    from charrnn.config import SampleOptions

    options = SampleOptions(temperature=temp, top_k=top_k, top_p=top_p)

    from charrnn.runtime import configure_jax

    configure_jax()
    from charrnn.inference import load_params
    from charrnn.runs import Run, latest_run
    from charrnn.sampling import sample_stream

    run = Run(run_dir) if run_dir is not None else latest_run()
    if not run.exists():
        raise RunError(f"{run.directory} is not a charrnn run (no config.json)")
    vocab = run.read_vocab()
    boundary = run.read_config()[2].get("boundary")  # the document boundary of a run trained on documents
    if unknown := vocab.missing(prime):
        if not skip_unknown:
            shown = ", ".join(repr(c) for c in unknown[:10])
            raise UsageError(f"the prime has characters this model never saw: {shown} (--skip-unknown drops them)")
        prime = "".join(c for c in prime if c in vocab)
    params, model_config = load_params(run, checkpoint, warn=lambda text: console.info(f"charrnn: warning: {text}"))
    seed = seed if seed is not None else int.from_bytes(os.urandom(4), "little")

    # A closed pipe (`| head`) or a full disk on stdout is handled for every command in main().
    _write_samples(
        sample_stream(
            params,
            model_config,
            vocab,
            length=length,
            prime=prime,
            options=options,
            num=num,
            seed=seed,
            stop=stops,
            boundary=boundary,
            stop_at_boundary=boundary_stop,
        ),
        prime,
        num,
        separator,
    )


def _write_samples(stream, prime: str, num: int, separator: str) -> None:
    """Stream sample 0 as it is generated; the others (same batch) follow, each after `separator`."""
    out = sys.stdout
    out.write(prime)
    out.flush()
    rest: list[list[str]] = [[] for _ in range(num - 1)]
    last = prime[-1:] if prime else ""
    for pieces in stream:
        out.write(pieces[0])
        out.flush()
        last = pieces[0][-1:] or last
        for buffer, piece in zip(rest, pieces[1:], strict=True):
            buffer.append(piece)
    for buffer in rest:
        out.write(separator + prime + "".join(buffer))
        last = (separator + prime + "".join(buffer))[-1:]
    if out.isatty() and last != "\n":
        out.write("\n")  # keep the shell prompt on its own line; pipes get the text exactly
    out.flush()
