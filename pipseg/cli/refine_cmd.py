"""`pipseg refine`: self-training rounds; prints a table of the rounds after each one."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from pipseg.cli._common import ConfigArg, SetOpt, WorkersOpt, console, fail, user_errors

if TYPE_CHECKING:
    from pipseg.refine import RoundResult

RoundsOpt = Annotated[
    int,
    typer.Option(
        "--rounds", "-r", min=0, help="Relabelling rounds after round 0 (0: a plain training run)."
    ),
]
AgreeOpt = Annotated[
    bool,
    typer.Option(
        "--agree",
        help="Inside boxes, keep only labels that agree with the previous round's (the rest "
        "ignored, 255). Measured in BENCHMARKS.md.",
    ),
]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Redo finished rounds (and overwrite their runs).")
]


def _percent(value: float | None) -> str:
    return f"{100 * value:.1f}" if value is not None else "-"


def rounds_table(results: list[RoundResult]) -> Table:
    """One row per round: label source, its mIoU against ground truth (train split) and share of
    labelled pixels, val mIoU, wall time."""
    table = Table(title="pipseg refine")
    for name, justify in (("round", "right"), ("labels", "left"), ("pseudo-label mIoU", "right"),
                          ("labelled", "right"), ("val mIoU", "right"), ("wall time", "right")):  # fmt: skip
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in results:
        time_text = f"{r.wall_time_s:.0f} s" + (" (earlier)" if r.reused else "")
        table.add_row(
            str(r.round),
            r.label_source,
            _percent(r.pseudo_miou),
            f"{_percent(r.coverage)}%" if r.coverage is not None else "-",
            _percent(r.val_miou),
            time_text,
        )
    if results:
        table.caption = f"runs: {Path(results[0].out_dir).parent}/round-<k>"
    return table


def refine(
    config: ConfigArg,
    rounds: RoundsOpt = 1,
    overrides: SetOpt = None,
    workers: WorkersOpt = None,
    agree: AgreeOpt = False,
    force: ForceOpt = False,
) -> None:
    """Self-training rounds: train, relabel in the boxes (model + DenseCRF), train again."""
    from pipseg.config import load_config
    from pipseg.refine import refine as run_rounds

    done: list[RoundResult] = []
    columns = (TextColumn("{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn())
    with user_errors(), Progress(*columns, console=console, transient=True) as bar:
        cfg = load_config(config, overrides)
        task = bar.add_task("round 0", total=cfg.optim.iters)

        def on_event(event: dict[str, Any]) -> None:
            if event["event"] == "start":
                bar.update(task, description=f"training on {event['label_source']}",
                           completed=event["start_iteration"])  # fmt: skip
            elif event["event"] == "iter":
                bar.update(task, completed=event["iteration"])

        def on_round(result: RoundResult) -> None:
            done.append(result)
            bar.console.print(rounds_table(done))

        try:
            run_rounds(
                cfg,
                rounds,
                force=force,
                agree=agree,
                workers=workers,
                on_round=on_round,
                progress=on_event,
            )
        except KeyboardInterrupt:
            raise fail(
                f"interrupted; rerun `pipseg refine {config} --rounds {rounds}` to continue",
                code=130,
            ) from None
