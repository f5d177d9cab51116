"""`charrnn sample [RUN]`: stream generated text to stdout, and nothing else."""

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from charrnn.config import check_seed
from charrnn.errors import UsageError
from charrnn.paths import why_unreadable

from .options import RunArgument, nonempty_path, with_default
from .reading import load_trained


# Typer reads the options from this signature: most of this function's lines declare them.
def sample(
    run_dir: RunArgument = None,
    temp: Annotated[float, typer.Option("--temp", help="Temperature; 0 picks the most likely character.")] = 0.8,
    length: Annotated[int, typer.Option("--length", "-n", help="Characters to generate (after the prime).")] = 1000,
    prime: Annotated[str | None, typer.Option(help="Text to warm the state on; printed first.")] = None,
    prime_file: Annotated[
        Path | None, typer.Option(parser=nonempty_path("--prime-file"), help="Read the prime text from this file.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help=with_default("Random seed.", "a new one each call"))] = None,
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
    if seed is not None:
        check_seed(seed)
    if checkpoint not in ("best", "latest"):
        raise UsageError(f"--checkpoint must be best or latest, not {checkpoint!r}")
    for name, text in (("--separator", separator), ("--prime", prime or "")):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(f"{name} is not valid text (it has bytes that are not UTF-8)") from None
    if prime is not None and prime_file is not None:
        raise UsageError("give --prime or --prime-file, not both")
    if prime_file is not None:
        prime = _read_prime(prime_file)
    prime = prime or ""
    from .options import unescape

    separator = unescape(separator)
    stops = tuple(unescape(text) for text in stop or ())
    if "" in stops:
        raise UsageError("--stop must not be empty")

    from charrnn.config import SampleOptions

    SampleOptions(temperature=temp, top_k=top_k, top_p=top_p)  # option mistakes before any file is read

    from charrnn.runs import Run, latest_run

    run = Run(run_dir) if run_dir is not None else latest_run()
    loaded = run.open()  # the configuration and vocabulary, checked, before JAX is even loaded
    loaded.require_left_to_right("sample")
    vocab = loaded.vocab
    if unknown := vocab.missing(prime):
        if not skip_unknown:
            shown = ", ".join(repr(c) for c in unknown[:10])
            raise UsageError(f"the prime has characters this model never saw: {shown} (--skip-unknown drops them)")
        prime = "".join(c for c in prime if c in vocab)

    from charrnn import memory

    memory.require(
        memory.sampling_bytes(loaded.model, num, len(prime)),
        f"sampling {num:,} streams from a {loaded.model.layers}×{loaded.model.hidden_size} "
        f"{loaded.model.cell.upper()}" + (f" after a prime of {len(prime):,} characters" if len(prime) > 1 else ""),
    )
    spool_bytes = 4 * (length + length // 256 + 1) * (num - 1)  # samples 2..N wait on disk, as UTF-32
    if spool_bytes:
        _require_disk(spool_bytes, num, length)

    model = load_trained(run, checkpoint)
    seed = seed if seed is not None else int.from_bytes(os.urandom(4), "little")
    options = {"temperature": temp, "top_k": top_k, "top_p": top_p, "stop": stops, "stop_at_boundary": boundary_stop}
    stream = model.sample_stream(length, prime=prime, num=num, seed=seed, **options)
    _write_samples(stream, prime, num, separator)  # a closed pipe or a full disk: handled in main()


def _read_prime(path: Path) -> str:
    """The text of --prime-file: a UTF-8 text file (not a directory, not binary)."""
    if path.is_dir():
        raise UsageError(f"--prime-file {path} is a directory, not a text file")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UsageError(f"--prime-file {path} {why_unreadable(error)}") from None
    if b"\x00" in data:
        raise UsageError(f"--prime-file {path} looks binary (NUL byte at offset {data.index(0)}); give a text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UsageError(f"--prime-file {path} is not valid UTF-8 (bad byte at offset {error.start})") from None


def _require_disk(needed: int, num: int, length: int) -> None:
    import shutil
    import tempfile

    free = shutil.disk_usage(tempfile.gettempdir()).free
    if needed > free:
        raise UsageError(
            f"--num {num:,} × --length {length:,} needs about {needed / 2**30:.1f} GiB of temporary disk "
            f"space in {tempfile.gettempdir()} (samples after the first wait there); it has {free / 2**30:.1f} GiB"
        )


class _Spool:
    """Samples 2..N of a batch, waiting on disk for sample 1 to finish: an anonymous temporary file
    (gone when closed, even after kill -9). Each chunk is stored as one record per sample of the
    same size (a 4-byte length, then the piece as UTF-32, padded to the chunk's longest piece: a
    sample that met its --stop has shorter pieces), so sample i is read back chunk by chunk at
    computed offsets. Memory stays bounded whatever --length and --num."""

    def __init__(self, count: int) -> None:
        import tempfile

        self.count = count
        self.file = tempfile.TemporaryFile()
        self.runs: list[list[int]] = []  # [piece size, number of chunks]: consecutive chunks of one size

    def add(self, pieces: list[str]) -> None:
        size = max(len(piece) for piece in pieces)
        if not size:
            return
        self.file.write(
            b"".join(
                len(piece).to_bytes(4, "little") + piece.encode("utf-32-le").ljust(4 * size, b"\0") for piece in pieces
            )
        )
        if self.runs and self.runs[-1][0] == size:
            self.runs[-1][1] += 1
        else:
            self.runs.append([size, 1])

    def text(self, index: int, block_chars: int = 1 << 20) -> Iterator[str]:
        """Sample `index` (0-based among the spooled ones), in pieces of about `block_chars`."""
        self.file.flush()
        offset = 0
        for size, chunks in self.runs:
            record = 4 + 4 * size
            stride = self.count * record
            per_block = max(1, block_chars // size)
            for first in range(0, chunks, per_block):
                parts = []
                for chunk in range(first, min(chunks, first + per_block)):
                    self.file.seek(offset + chunk * stride + index * record)
                    data = self.file.read(record)
                    length = int.from_bytes(data[:4], "little")
                    parts.append(data[4 : 4 + 4 * length])
                yield b"".join(parts).decode("utf-32-le")
            offset += chunks * stride

    def close(self) -> None:
        self.file.close()


def _write_samples(stream, prime: str, num: int, separator: str) -> None:
    """Stream sample 1 as it is generated; the others (same batch) follow, each after `separator`,
    read back from a spool on disk."""
    out = sys.stdout
    out.write(prime)
    out.flush()
    spool = _Spool(num - 1) if num > 1 else None
    last = prime[-1:] if prime else ""
    try:
        for pieces in stream:
            out.write(pieces[0])
            out.flush()
            last = pieces[0][-1:] or last
            if spool is not None:
                spool.add(pieces[1:])
        for index in range(num - 1):
            out.write(separator + prime)
            last = (separator + prime)[-1:] or last
            for text in spool.text(index):
                out.write(text)
                last = text[-1:] or last
    finally:
        if spool is not None:
            spool.close()
    if out.isatty() and last != "\n":
        out.write("\n")  # keep the shell prompt on its own line; pipes get the text exactly
    out.flush()
