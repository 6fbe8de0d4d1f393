"""`pipseg runs`: finished and running training runs side by side, and their val curves."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from pipseg.cli._common import console, user_errors


def runs(
    folders: Annotated[list[Path], typer.Argument(help="Run folders (runtime.out_dir) or folders holding them")],
    curves: Annotated[Path, typer.Option("--curves", help="Write every run's val mIoU curve into this PNG")] = Path("runs_val.png"),
) -> None:
    """Compare training runs: a table (label source, loss, lambda, iterations, val mIoU, wall time) and val curves."""
    from pipseg.runs import find_runs, plot_val_curves, read_run, short_names

    with user_errors():
        rows = [read_run(path) for path in find_runs(folders)]
        names = short_names(rows)
        plot_val_curves(rows, curves, names)
    console.print(runs_table(rows, names))
    console.print(f"val curves written to {curves}", highlight=False, soft_wrap=True)


def runs_table(rows: list[Any], names: list[str]) -> Table:
    """One line per run (`pipseg.runs.RunRow`)."""
    table = Table(show_edge=False)
    for title in ("run", "labels", "loss", "lambda", "iterations", "best val mIoU", "last val mIoU", "wall time"):
        table.add_column(title, justify="left" if title in ("run", "labels", "loss") else "right")
    for row, name in zip(rows, names, strict=True):
        iters = f"{row.iteration}/{row.iters}" if row.iters else str(row.iteration)
        table.add_row(
            name, row.label_source, row.loss, "-" if row.lamb is None else f"{row.lamb:g}",
            iters + ("" if row.finished else " (unfinished)"), _pct(row.best_miou), _pct(row.last_miou),
            _duration(row.wall_time_s),
        )  # fmt: skip
    return table


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
