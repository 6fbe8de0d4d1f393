"""`pipseg eval`: score a prediction folder against ground truth, or a checkpoint on a val split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from pipseg.cli._common import (
    CheckpointOpt,
    DeviceOpt,
    SetOpt,
    WorkersOpt,
    console,
    progress_bar,
    require_checkpoint,
    user_errors,
    warn,
)
from pipseg.errors import PipsegError

SUMMARY = (("mIoU", "miou"), ("pixel accuracy", "pixel_accuracy"), ("mean accuracy", "mean_accuracy"),
           ("fw IoU", "fw_iou"))  # fmt: skip


def results_table(results: dict[str, Any], classes: list[str]) -> Table:
    """Per-class IoU and the four summary figures; a second column when a ``crf`` sub-dict is there."""
    runs = [("IoU", results)] + ([("IoU + CRF", results["crf"])] if "crf" in results else [])
    table = Table(show_edge=False)
    table.add_column("class")
    for title, _ in runs:
        table.add_column(title, justify="right")
    for c in range(len(results["iou"])):
        table.add_row(classes[c], *(_pct(r["iou"][c]) for _, r in runs))
    table.add_section()
    for title, key in SUMMARY:
        table.add_row(f"[bold]{title}[/]", *(f"[bold]{_pct(r[key])}[/]" for _, r in runs))
    return table


def _json_safe(value: Any) -> Any:
    """NaN (a class absent from GT and predictions) -> null: JSON has no NaN."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _pct(value: float | None) -> str:
    return "-" if value is None or value != value else f"{100 * value:.2f}"


def eval_(
    config: Annotated[Path | None, typer.Argument(help="Config of the run (checkpoint mode)")] = None,
    checkpoint: CheckpointOpt = None,
    crf: Annotated[bool, typer.Option("--crf", help="Checkpoint mode: also score after DenseCRF")] = False,
    overrides: SetOpt = None,
    device: DeviceOpt = "auto",
    pred: Annotated[Path | None, typer.Option("--pred", help="Folder mode: predicted <id>.png maps")] = None,
    gt: Annotated[Path | None, typer.Option("--gt", help="Folder mode: ground-truth <id>.png maps")] = None,
    id_list: Annotated[Path | None, typer.Option("--list", help="Folder mode: ids to score (default: every GT png)")] = None,
    classes: Annotated[Path | None, typer.Option("--classes", help="Folder mode: class names, one per line, background first")] = None,
    num_classes: Annotated[int | None, typer.Option("--num-classes", min=2, help="Folder mode: number of classes (default: as many as --classes names, else 21)", show_default=False)] = None,
    crop_padded: Annotated[bool, typer.Option("--crop-padded", help="Folder mode: crop predictions padded bottom/right")] = False,
    workers: WorkersOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the scores to this JSON file")] = None,
) -> None:
    """Score predictions: CONFIG --checkpoint CKPT [--crf], or --pred DIR --gt DIR."""
    from pipseg.io import atomic_write_json

    with user_errors():
        if pred is not None or gt is not None:
            if pred is None or gt is None or config is not None:
                raise PipsegError("eval: folder mode takes both --pred DIR and --gt DIR and no CONFIG")
            names = _folder_class_names(classes, num_classes)
            results = _eval_folders(pred, gt, id_list, len(names), crop_padded, workers)
        elif config is not None:
            if classes is not None or num_classes is not None:
                raise PipsegError("eval: --classes and --num-classes are for folder mode; a checkpoint names its classes")
            results, names = _eval_checkpoint(config, require_checkpoint(checkpoint), crf, overrides, device)
        else:
            raise PipsegError("eval: give CONFIG --checkpoint CKPT (score a model) or --pred DIR --gt DIR (score a folder)")
        if json_out is not None:
            atomic_write_json(json_out, _json_safe({**results, "classes": names}))
    console.print(results_table(results, names))
    if json_out is not None:
        console.print(f"scores written to {json_out}", highlight=False, soft_wrap=True)


def _folder_class_names(classes: Path | None, num_classes: int | None) -> list[str]:
    """The names of --classes FILE, or placeholders for --num-classes (default 21) classes."""
    from pipseg.data.lists import class_names, read_class_list

    if classes is None:
        return class_names(num_classes or 21)
    names = read_class_list(classes)
    if num_classes is not None and num_classes != len(names):
        raise PipsegError(f"{classes}: lists {len(names)} classes but --num-classes is {num_classes}; give one of them")
    return class_names(len(names), names)


def _eval_folders(
    pred: Path, gt: Path, id_list: Path | None, num_classes: int, crop_padded: bool, workers: int | None
) -> dict[str, Any]:
    from pipseg.data.lists import read_id_list
    from pipseg.evaluate import evaluate_folders

    ids = read_id_list(id_list) if id_list is not None else None
    with progress_bar("eval") as update:
        return evaluate_folders(
            pred, gt, ids=ids, num_classes=num_classes, crop_padded=crop_padded, workers=workers, progress=update,
            on_warning=warn,
        )


def _eval_checkpoint(
    config: Path, checkpoint: Path, crf: bool, overrides: list[str] | None, device: str
) -> tuple[dict[str, Any], list[str]]:
    from pipseg.config import load_config
    from pipseg.device import resolve_device
    from pipseg.evaluate import evaluate_checkpoint

    cfg = load_config(config, overrides)
    dev = resolve_device(device)
    with progress_bar(f"eval {cfg.data.val_split}") as update:
        return evaluate_checkpoint(cfg, checkpoint, crf=crf, device=dev, progress=update, source=str(config))
