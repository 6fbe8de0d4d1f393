"""`pipseg eval`: score a prediction folder against ground truth, or a checkpoint on a val split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from pipseg.cli._common import (
    AlphaOpt,
    CheckpointOpt,
    DeviceOpt,
    MaxSideOpt,
    OverlapOpt,
    SetOpt,
    TileOpt,
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


def _pct(value: float | None) -> str:
    return "-" if value is None or value != value else f"{100 * value:.2f}"


def eval_(
    config: Annotated[Path | None, typer.Argument(help="Config of the run (checkpoint mode)")] = None,
    checkpoint: CheckpointOpt = None,
    crf: Annotated[bool, typer.Option("--crf", help="Checkpoint mode: also score after DenseCRF (where: eval.crf_canvas)")] = False,
    overrides: SetOpt = None,
    device: DeviceOpt = "auto",
    pred: Annotated[Path | None, typer.Option("--pred", help="Folder mode: predicted <id>.png maps")] = None,
    gt: Annotated[Path | None, typer.Option("--gt", help="Folder mode: ground-truth <id>.png maps")] = None,
    id_list: Annotated[Path | None, typer.Option("--list", help="Folder mode: ids to score (default: every GT png)")] = None,
    classes: Annotated[Path | None, typer.Option("--classes", help="Class names, one per line, background first (default: the checkpoint's, else the prepared dataset's)")] = None,
    num_classes: Annotated[int | None, typer.Option("--num-classes", min=2, help="Folder mode: number of classes (default: as many as --classes names, else 21)", show_default=False)] = None,
    crop_padded: Annotated[bool, typer.Option("--crop-padded", help="Folder mode: crop predictions padded bottom/right")] = False,
    workers: WorkersOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the scores (per class by name, confusion matrix) to this JSON file")] = None,
    show_dir: Annotated[Path | None, typer.Option("--show-dir", help="Write per-image overlays and error maps and report.html here")] = None,
    images: Annotated[Path | None, typer.Option("--images", help="Folder mode with --show-dir: the images, to draw overlays on")] = None,
    alpha: AlphaOpt = 0.5,
    max_side: MaxSideOpt = None,
    tile: TileOpt = None,
    overlap: OverlapOpt = 128,
) -> None:
    """Score predictions: CONFIG --checkpoint CKPT [--crf], or --pred DIR --gt DIR."""
    from pipseg.evaluate import LargeImages
    from pipseg.io import atomic_write_json
    from pipseg.report import ShowWriter, scores_document

    with user_errors():
        large = LargeImages(max_side, tile, overlap)
        if pred is not None or gt is not None:
            if pred is None or gt is None or config is not None:
                raise PipsegError("eval: folder mode takes both --pred DIR and --gt DIR and no CONFIG")
            if large.active:
                raise PipsegError("eval: --max-side and --tile are for checkpoint mode (folder mode scores label maps)")
            names = _folder_class_names(classes, num_classes, checkpoint)
            writer = ShowWriter(show_dir, names, alpha=alpha) if show_dir is not None else None
            results = _eval_folders(pred, gt, id_list, len(names), crop_padded, workers, writer, images)
        elif config is not None:
            if num_classes is not None or images is not None:
                raise PipsegError("eval: --num-classes and --images are for folder mode; a checkpoint names its classes")
            names = read_names(classes) if classes is not None else None
            writer = ShowWriter(show_dir, names or [], alpha=alpha) if show_dir is not None else None
            results, names = _eval_checkpoint(config, require_checkpoint(checkpoint), crf, overrides, device,
                                              large, writer, names)  # fmt: skip
        else:
            raise PipsegError("eval: give CONFIG --checkpoint CKPT (score a model) or --pred DIR --gt DIR (score a folder)")
        if json_out is not None:
            atomic_write_json(json_out, scores_document(results, names))
        report = _write_report(writer, results) if writer is not None else None
    console.print(results_table(results, names))
    for path, what in ((json_out, "scores written to"), (report, "report written to")):
        if path is not None:
            console.print(f"{what} {path}", highlight=False, soft_wrap=True)


def _write_report(writer: Any, results: dict[str, Any]) -> Path:
    """report.html of the final labels: after CRF when it ran (the pictures show those)."""
    scores, title = (results["crf"], "pipseg evaluation (after DenseCRF)") if "crf" in results else (results, "pipseg evaluation")
    return writer.write_report(scores, title=title)


def read_names(classes: Path) -> list[str]:
    """The names of a --classes FILE."""
    from pipseg.data.lists import class_names, read_class_list

    names = read_class_list(classes)
    return class_names(len(names), names)


def _folder_class_names(classes: Path | None, num_classes: int | None, checkpoint: Path | None) -> list[str]:
    """The names of --classes FILE, else the --checkpoint's, else placeholders for --num-classes (default 21)."""
    from pipseg.data.lists import class_names

    if classes is not None:
        names = read_names(classes)
    elif checkpoint is not None:
        from pipseg.models import model_from_checkpoint

        names = model_from_checkpoint(checkpoint)[1]["classes"]
    else:
        return class_names(num_classes or 21)
    if num_classes is not None and num_classes != len(names):
        source = classes if classes is not None else checkpoint
        raise PipsegError(f"{source}: lists {len(names)} classes but --num-classes is {num_classes}; give one of them")
    return names


def _eval_folders(
    pred: Path, gt: Path, id_list: Path | None, num_classes: int, crop_padded: bool, workers: int | None,
    writer: Any, images: Path | None,
) -> dict[str, Any]:
    from pipseg.data.lists import read_id_list
    from pipseg.evaluate import evaluate_folders, gt_ids
    from pipseg.report import show_folders

    ids = read_id_list(id_list) if id_list is not None else None
    with progress_bar("eval") as update:
        results = evaluate_folders(
            pred, gt, ids=ids, num_classes=num_classes, crop_padded=crop_padded, workers=workers, progress=update,
            on_warning=warn,
        )
    if writer is not None:
        with progress_bar("pictures") as update:
            show_folders(writer, pred, gt, ids if ids is not None else gt_ids(gt), images_dir=images,
                         crop_padded=crop_padded, progress=update)  # fmt: skip
    return results


def _eval_checkpoint(
    config: Path, checkpoint: Path, crf: bool, overrides: list[str] | None, device: str,
    large: Any, writer: Any, names: list[str] | None,
) -> tuple[dict[str, Any], list[str]]:
    from pipseg.config import load_config
    from pipseg.device import resolve_device
    from pipseg.evaluate import evaluate_checkpoint

    cfg = load_config(config, overrides)
    dev = resolve_device(device)
    with progress_bar(f"eval {cfg.data.val_split}") as update:
        results, found = evaluate_checkpoint(
            cfg, checkpoint, crf=crf, device=dev, progress=update, source=str(config), large=large,
            names=names, show=writer.bind if writer is not None else None,
        )  # fmt: skip
    return results, found
