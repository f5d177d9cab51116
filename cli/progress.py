"""Training's reports as the user sees them: a rich progress bar on a terminal, plain lines
otherwise, nothing at all for the processes of a multi-host run other than process 0."""

import math

from . import console


def run_quietly(reports):
    """Drive training without a word (the processes of a multi-host run other than process 0)."""
    from charrnn.loop import Finished

    for report in reports:
        if isinstance(report, Finished):
            return report
    raise AssertionError("fit ended without a Finished report")


def run_with_progress(reports):
    """Drive training, rendering its reports: a rich bar on a terminal, plain lines otherwise."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from charrnn.loop import EvalReport, Finished, Notice, StepReport

    val_text = "val -"
    ticker = console.PlainTicker()
    if not console.interactive():
        for report in reports:
            if isinstance(report, StepReport) and ticker.due():
                console.info(
                    f"step {report.step} epoch {report.epoch:.2f} loss {report.loss:.4f} lr {report.learning_rate:.2e} "
                    f"{report.chars_per_second:,.0f} chars/s elapsed {console.format_duration(report.elapsed)}"
                    + (f" ({report.progress:.0%})" if math.isfinite(report.progress) else "")
                )
            elif isinstance(report, EvalReport):
                console.info(
                    f"step {report.step} epoch {report.epoch:.2f} validation {report.val_loss:.4f} nats/char "
                    f"({report.val_loss / math.log(2):.3f} bits/char){' best' if report.is_best else ''}"
                )
            elif isinstance(report, Notice):
                console.info(f"charrnn: warning: {report.message}")
            elif isinstance(report, Finished):
                return report
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[loss]}  {task.fields[val]}  {task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console.stderr(), redirect_stdout=False, redirect_stderr=False) as progress:
        task = progress.add_task("starting", total=1000, loss="", val=val_text, rate="")
        for report in reports:
            if isinstance(report, StepReport):
                progress.update(
                    task,
                    completed=1000 * report.progress if math.isfinite(report.progress) else None,
                    description=f"step {report.step} ep {report.epoch:.2f}",
                    loss=f"loss {report.loss:.3f}",
                    rate=f"{report.chars_per_second:,.0f} ch/s",
                )
            elif isinstance(report, EvalReport):
                val_text = f"val {report.val_loss:.3f}{'*' if report.is_best else ''}"
                progress.update(task, val=val_text)
                progress.console.print(
                    f"step {report.step} validation {report.val_loss:.4f} nats/char "
                    f"({report.val_loss / math.log(2):.3f} bits/char){' best' if report.is_best else ''}",
                    markup=False,
                )
            elif isinstance(report, Notice):
                progress.console.print(f"charrnn: warning: {report.message}", markup=False)
            elif isinstance(report, Finished):
                return report
    raise AssertionError("fit ended without a Finished report")
