"""`charrnn bench`: how fast training and sampling run here, as a fraction of the matmul peak."""

import sys
from pathlib import Path
from typing import Annotated

import typer

from charrnn.config import CELLS, DTYPES, ModelConfig, TrainConfig
from charrnn.errors import UsageError

from . import console
from .options import nonempty_path

MAX_CHUNK = 1 << 16
MAX_PEAK_SIZE = 1 << 15


# Typer reads the options from this signature: most of this function's lines declare them.
def bench(
    cell: Annotated[str, typer.Option(help=f"Cells to measure, comma-separated: {', '.join(CELLS)}; or all.")] = "all",
    dtype: Annotated[str, typer.Option(help=f"Precision: {', '.join(DTYPES)} or all.")] = "all",
    layers: Annotated[int, typer.Option(help="Recurrent layers.")] = 2,
    hidden: Annotated[int, typer.Option("--hidden", help="Units per layer.")] = 512,
    embed: Annotated[int, typer.Option("--embed", help="Embedding size.")] = 64,
    vocab: Annotated[int, typer.Option("--vocab", help="Vocabulary size.")] = 65,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Parallel streams.")] = 64,
    seq_len: Annotated[int, typer.Option("--seq-len", "-t", help="Characters per window.")] = 100,
    steps: Annotated[
        int,
        typer.Option(help="Timed training steps per repeat, run several per call as `train` does (best of 3 repeats)."),
    ] = 5,
    streams: Annotated[int, typer.Option(help="Streams for the batched sampling figure.")] = 64,
    chunk: Annotated[int, typer.Option(help="Characters per compiled sampling chunk.")] = 256,
    score_rows: Annotated[int, typer.Option(help="Lines per compiled scoring chunk.")] = 256,
    score_length: Annotated[int, typer.Option(help="Characters per line of the scoring chunk (a bucket).")] = 128,
    peak_size: Annotated[int, typer.Option(help="Matrix size of the peak GEMM.")] = 2048,
    startup: Annotated[bool, typer.Option(help="Also time `charrnn sample` in fresh processes.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    bidirectional: Annotated[
        bool,
        typer.Option(
            "--bidirectional", help="Also the bidirectional model: training, and `check` at the batch × seq-len shape."
        ),
    ] = False,
    breakdown: Annotated[
        bool,
        typer.Option(
            "--breakdown",
            help="Also where a training step's time goes: each part (embedding, forward and "
            "backward loops, weight gradients, output and loss, optimizer) run alone at the step's shapes.",
        ),
    ] = False,
    profile: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            parser=nonempty_path("--profile"),
            help="Also write an XLA profiler trace of two training steps per model into DIR "
            "(open it in Perfetto, ui.perfetto.dev, or TensorBoard's profiler).",
        ),
    ] = None,
    attention: Annotated[
        int,
        typer.Option(
            metavar="M",
            help="Also each model with one attention head over M positions (train --attention): training, "
            "sampling and scoring, as fractions of the same model without it.",
        ),
    ] = 0,
) -> None:
    """Measure training, sampling and scoring throughput, compile and start-up times, against the matmul peak."""
    cells = list(CELLS) if cell == "all" else [name.strip() for name in cell.split(",")]
    for name in cells:
        if name not in CELLS:
            raise UsageError(f"--cell must be one of {', '.join(CELLS)} or all (or a list of them), not {name!r}")
    if dtype not in (*DTYPES, "all"):
        raise UsageError(f"--dtype must be one of {', '.join(DTYPES)} or all, not {dtype!r}")
    for name, value, low, high in (
        ("--vocab", vocab, 2, 1 << 20),
        ("--steps", steps, 1, 1 << 20),
        ("--streams", streams, 1, 1 << 20),
        ("--chunk", chunk, 1, MAX_CHUNK),
        ("--peak-size", peak_size, 1, MAX_PEAK_SIZE),
        ("--score-rows", score_rows, 1, 1 << 16),
        ("--score-length", score_length, 1, MAX_CHUNK),
        ("--attention", attention, 0, 1 << 16),
    ):
        if not low <= value <= high:
            raise UsageError(f"{name} must be between {low} and {high}, not {value}")
    if profile is not None:
        from charrnn.paths import check_output_dir

        check_output_dir(profile, "--profile")
    dtypes = list(DTYPES) if dtype == "all" else [dtype]
    configs = [
        ModelConfig(vocab_size=vocab, cell=c, layers=layers, hidden_size=hidden, embed_size=embed, dtype=d)
        for c in cells
        for d in dtypes
    ]
    train_config = TrainConfig(batch_size=batch_size, seq_len=seq_len)
    from charrnn import memory

    for config in configs:
        memory.require(
            max(
                memory.training_bytes(config, train_config),
                memory.sampling_bytes(config, streams, 0, chunk),
                3 * peak_size**2 * memory.FLOAT + memory.OVERHEAD,
            ),
            f"benchmarking a {layers}×{hidden} {config.cell.upper()} (batch {batch_size} × {seq_len}, "
            f"{streams} streams, peak GEMM {peak_size}²)",
        )

    from .process import configure_jax

    configure_jax()
    from charrnn import bench as measure

    options = measure.BenchOptions(
        steps=steps,
        streams=streams,
        chunk=chunk,
        score_rows=score_rows,
        score_length=score_length,
        peak_size=peak_size,
        bidirectional=bidirectional,
        attention=attention,
        breakdown=breakdown,
        profile=profile,
        startup=startup,
    )
    results = measure.measure(configs, train_config, options, report=console.info)
    if as_json:
        sys.stdout.write(measure.to_json(results) + "\n")
    else:
        _table(results, streams)


def _table(results: dict, streams: int) -> None:
    from rich.console import Console
    from rich.table import Table

    peaks = results["peak_gflops"]
    config = results["config"]
    table = Table(
        title=f"charrnn bench: {config['layers']}×{config['hidden']}, embed {config['embed']}, vocab "
        f"{config['vocab']}, batch {config['batch_size']}×{config['seq_len']} — matmul peak "
        f"{peaks['float32']:.0f} GFLOP/s fp32, {peaks['bfloat16']:.0f} bf16 ({results['machine']['device']})"
    )
    for column in (
        "cell",
        "dtype",
        "params",
        "train chars/s",
        "train GFLOP/s",
        "% of peak",
        "% of fp32 peak",
        "sample 1 ch/s",
        f"sample {streams} ch/s",
        "score ch/s",
        "score GFLOP/s",
        "score % of peak",
        "compile train s",
        "compile sample s",
    ):
        table.add_column(column, justify="right")
    for model in results["models"]:
        train = model["train"]
        table.add_row(
            model["cell"],
            model["dtype"],
            f"{model['parameters']:,}",
            f"{train['chars_per_second']:,.0f}",
            f"{train['gflops']:.0f}",
            f"{100 * train['fraction_of_peak']:.0f}%",
            f"{100 * train['fraction_of_fp32_peak']:.0f}%",
            f"{model['sample_1']['chars_per_second']:,.0f}",
            f"{model[f'sample_{streams}']['chars_per_second']:,.0f}",
            f"{model['score']['chars_per_second']:,.0f}",
            f"{model['score']['gflops']:.0f}",
            f"{100 * model['score']['fraction_of_peak']:.0f}%",
            f"{train['compile_seconds']:.2f}",
            f"{model['sample_1']['compile_seconds']:.2f}",
        )
    out = Console(soft_wrap=False, width=200 if not sys.stdout.isatty() else None)
    out.print(table)
    for model in results["models"]:
        if both := model.get("bidirectional"):
            out.print(
                f"bidirectional {model['cell']} {model['dtype']}: training {both['train']['chars_per_second']:,.0f} "
                f"chars/s ({100 * both['train']['fraction_of_peak']:.0f}% of peak, "
                f"{both['train']['of_left_to_right']:.2f}× the left-to-right model); "
                f"check {both['check']['chars_per_second']:,.0f} chars/s"
            )
        if attended := model.get("attention"):
            out.print(
                f"{model['cell']} {model['dtype']} with attention {attended['positions']}: "
                + ", ".join(
                    f"{name.replace('_', ' ')} {attended[name]['chars_per_second']:,.0f} chars/s "
                    f"({attended[name]['of_without']:.2f}× without)"
                    for name in ("train", "sample_1", f"sample_{streams}", "score")
                )
            )
        if parts := model.get("breakdown"):
            out.print(_breakdown_table(model, parts))
    if "startup" in results:
        s = results["startup"]
        out.print(
            f"first sampled character in a fresh process: {s['first_char_cold_seconds']:.2f} s cold cache, "
            f"{s['first_char_warm_seconds']:.2f} s warm; `charrnn --help` {s['help_seconds']:.2f} s"
        )


def _breakdown_table(model: dict, parts: dict):
    from rich.table import Table

    table = Table(
        title=f"where the time of one {model['cell']} {model['dtype']} training step goes "
        f"({1e3 * parts['step_seconds']:,.1f} ms; each part run alone)",
        title_justify="left",
    )
    for column in ("part", "ms per step", "share of the step", "matmul GFLOP/s", "% of peak"):
        table.add_column(column, justify="left" if column == "part" else "right")
    for name, part in parts["parts"].items():
        matmul = "gflops" in part
        table.add_row(
            name,
            f"{1e3 * part['seconds']:,.1f}",
            f"{100 * part['share']:.1f}%",
            f"{part['gflops']:.0f}" if matmul else "",
            f"{100 * part['fraction_of_peak']:.0f}%" if matmul else "",
        )
    rest = parts["rest_seconds"]
    table.add_row("the rest (glue, copies, host)", f"{1e3 * rest:,.1f}", f"{100 * rest / parts['step_seconds']:.1f}%")
    return table
