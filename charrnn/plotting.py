"""Loss curves of one or more runs: a PNG through matplotlib (Agg, no display needed) or text
through plotext. Both are optional (``pip install 'charrnn[plot]'``) and imported only here.

The curves are the run's metrics.jsonl: at every evaluation, the validation loss and the mean
training loss of the last steps before it.
"""

from dataclasses import dataclass
from pathlib import Path

from charrnn.errors import CharrnnError, RunError
from charrnn.paths import write_atomically
from charrnn.report import read_run
from charrnn.runs import Run

INSTALL_HINT = "pip install 'charrnn[plot]'"
X_AXES = {"steps": "training step", "chars": "characters seen"}


@dataclass(frozen=True)
class Curves:
    name: str
    x: list[float]
    train: list[tuple[float, float]]  # (x, training loss) where recorded
    val: list[tuple[float, float]]  # (x, validation loss)


def load_curves(run: Run, x_axis: str = "steps") -> Curves:
    """The loss curves of `run` against steps or characters seen; one line if it has none yet."""
    _, train_config, _, _, _, metrics = read_run(run)
    points = [m for m in metrics if isinstance(m.get("val_loss"), int | float)]
    if not points:
        raise RunError(f"{run.directory} has no metrics yet (no evaluation in metrics.jsonl); nothing to plot")

    def x_of(m: dict) -> float:
        if x_axis == "steps":
            return m["step"]
        return m.get("chars_seen") or m["step"] * train_config.batch_size * train_config.seq_len

    train = [(x_of(m), m["train_loss"]) for m in points if isinstance(m.get("train_loss"), int | float)]
    return Curves(run.directory.name, [x_of(m) for m in points], train, [(x_of(m), m["val_loss"]) for m in points])


def _distinct_names(curves: list[Curves], runs: list[Run]) -> list[str]:
    names = [c.name for c in curves]
    if len(set(names)) == len(names):
        return names
    return [str(r.directory) for r in runs]


def save_png(runs: list[Run], path: Path, x_axis: str = "steps") -> None:
    """One PNG with a colour per run: validation solid with dots, training dashed."""
    curves = [load_curves(run, x_axis) for run in runs]
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise CharrnnError(f"plotting needs matplotlib: {INSTALL_HINT}") from error

    # The Agg canvas on a bare Figure: a file, never a window, and no pyplot global state touched.
    figure = Figure(figsize=(9, 5.5), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for index, (curve, name) in enumerate(zip(curves, _distinct_names(curves, runs), strict=True)):
        colour = f"C{index % 10}"
        if curve.train:
            axes.plot(*zip(*curve.train, strict=True), "--", color=colour, alpha=0.7, label=f"{name} training")
        axes.plot(*zip(*curve.val, strict=True), "-o", color=colour, markersize=3, label=f"{name} validation")
    axes.set_xlabel(X_AXES[x_axis])
    axes.set_ylabel("loss (nats/char)")
    axes.set_title("training and validation loss")
    axes.grid(True, alpha=0.3)
    axes.legend()
    write_atomically(path, lambda target: figure.savefig(target, format="png"))


def terminal_plot(
    runs: list[Run], x_axis: str = "steps", width: int = 100, height: int = 28, colour: bool = True
) -> str:
    """The same curves as text, for a terminal (plotext 6): one colour per signal, from its theme."""
    curves = [load_curves(run, x_axis) for run in runs]
    try:
        import plotext
    except ImportError as error:
        raise CharrnnError(f"plotting needs plotext: {INSTALL_HINT}") from error
    figure = plotext.figure
    figure.clear()
    figure.plot_size(width, height)
    for curve, name in zip(curves, _distinct_names(curves, runs), strict=True):
        if curve.train:
            train = figure.signal(*map(list, zip(*curve.train, strict=True)), marker="dot")
            figure.draw(train.lines().label(f"{name} train"))
        val = figure.signal(*map(list, zip(*curve.val, strict=True)), marker="hd")
        figure.draw(val.lines().label(f"{name} val"))
    figure.label(X_AXES[x_axis], axis="x")
    figure.label("nats/char", axis="y")
    figure.title("training and validation loss")
    points = [p for curve in curves for p in (*curve.train, *curve.val)]
    top_right = (max(x for x, _ in points), max(y for _, y in points))
    figure.legend(x=top_right[0], y=top_right[1], ha="right", relative=True)  # where falling curves are not
    return figure.build().string(colorless=not colour)
