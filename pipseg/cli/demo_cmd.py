"""`pipseg demo`: the whole pipeline on the embedded synthetic data."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from pipseg.cli._common import SetOpt, console, user_errors

if TYPE_CHECKING:
    from pipseg.demo import DemoResult


def demo(
    workdir: Annotated[Path, typer.Option(help="Folder for data, run and outputs.")] = Path("runs/demo"),
    config: Annotated[Path | None, typer.Option(help="Demo config (default configs/demo.yaml).")] = None,
    overrides: SetOpt = None,
    crf: Annotated[bool, typer.Option(help="Also score with DenseCRF post-processing.")] = True,
    train_images: Annotated[int, typer.Option(min=1, help="Synthetic training images.")] = 160,
    val_images: Annotated[int, typer.Option(min=1, help="Synthetic validation images.")] = 40,
) -> None:
    """Run the whole pipeline on generated data: pseudo labels, PIP training, eval, contact sheet."""
    from pipseg.demo import run_demo

    with user_errors(), Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(), console=console, transient=True,
    ) as bar:  # fmt: skip
        task = None

        def on_train(event: dict[str, Any]) -> None:
            nonlocal task
            if event.get("event") == "start":
                task = bar.add_task("train", total=event.get("iters"), info="")
            elif event.get("event") == "iter" and task is not None:
                bar.update(task, completed=event["iteration"])
            elif event.get("event") == "log" and task is not None:
                bar.update(task, info=f"loss {event['loss']:.3f} (box {event['box']:.3f}, "
                           f"pixel {event['pixel']:.3f})")  # fmt: skip

        result = run_demo(
            workdir, config=config, overrides=overrides, with_crf=crf, n_train=train_images,
            n_val=val_images,
            stage=lambda name: console.print(f"[cyan]>[/] {name}"), train_progress=on_train,
        )  # fmt: skip
    console.print(_results_table(result))
    console.print(f"checkpoint      {result.checkpoint}")
    console.print(f"predictions     {result.predictions_dir} ({result.predictions} val images, <id>.png and <id>.overlay.png)")
    console.print(f"contact sheet   {result.contact_sheet}")
    if not result.trained_now:
        console.print("[dim]reused the finished run in the work folder (delete it to retrain)[/]")


def _results_table(result: DemoResult) -> Table:
    """mIoU against ground truth of the pseudo labels, the model, and the model with DenseCRF."""
    table = Table(title="pipseg demo: PIP on synthetic box supervision")
    table.add_column("what")
    table.add_column("mIoU vs ground truth", justify="right")
    table.add_row(f"pseudo labels '{result.pseudo_source}' (train)", f"{100 * result.pseudo_miou:.1f}")
    table.add_row("model prediction (val)", f"{100 * result.model_miou:.1f}")
    if result.crf_miou is not None:
        table.add_row("model + DenseCRF (val)", f"{100 * result.crf_miou:.1f}")
    return table
