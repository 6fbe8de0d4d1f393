"""`pipseg prepare`: check a box-annotated dataset, build pseudo labels and splits, write the manifest."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from pipseg.cli._common import DeviceOpt, console, err_console, fail, user_errors
from pipseg.config import DataConfig

if TYPE_CHECKING:
    from pipseg.data.prepare import ModelSource, PrepareReport

DEFAULT_VOC_ROOT = DataConfig().root  # what `prepare` reads without --images / --voc-root


def report_table(report: PrepareReport) -> Table:
    """The summary table: label maps per source and split, missing ones, mIoU against GT on the
    pixels each source labels, and the share it labels (not ignore)."""
    splits = list(report.splits)
    table = Table(title=f"{report.where} -> {report.out_dir}")
    table.add_column("source")
    for split in splits:
        table.add_column(f"{split} ({len(report.splits[split])})", justify="right")
    table.add_column("missing", justify="right")
    table.add_column("new files", justify="right")
    table.add_column("mIoU vs GT", justify="right")
    table.add_column("labelled", justify="right")
    table.add_row("images", *[str(len(report.splits[s])) for s in splits], "", "", "", "")
    for kind, source in report.sources.items():
        scored = next(iter(source.miou.items()), None)
        table.add_row(
            kind,
            *[str(source.counts.get(s, "?")) for s in splits],
            str(len(source.missing_ids)) if source.for_splits and source.missing else "-",
            str(source.written),
            f"{100 * scored[1]:.1f} ({scored[0]})" if scored else "",
            f"{100 * source.coverage:.1f}%" if source.coverage is not None else "",
        )
    notes = [f"{report.format} boxes: {report.images} images, {report.objects} boxes"]
    if report.crowd:
        notes.append(f"{report.crowd} crowd regions (ignore)")
    if report.unknown:
        notes.append(f"{report.unknown} objects of unknown classes skipped")
    table.caption = "; ".join(notes + report.notes)
    return table


def prepare(
    voc_root: Annotated[Path | None, typer.Option(
        "--voc-root", help=f"VOC folder (JPEGImages, Annotations, optional SegmentationClass and "
        f"ImageSets/Segmentation); without --images it defaults to {DEFAULT_VOC_ROOT}.",
        show_default=False)] = None,
    images: Annotated[Path | None, typer.Option(help="Folder of images (jpg, png, bmp, webp).")] = None,
    annotations: Annotated[Path | None, typer.Option(
        help="Boxes: a COCO instances .json, or a folder of YOLO .txt or VOC .xml files.")] = None,
    val_annotations: Annotated[Path | None, typer.Option(
        help="Boxes of the val images (same format); else --val-fraction splits.")] = None,
    val_images: Annotated[Path | None, typer.Option(help="Folder of the val images (default --images).")] = None,
    val_fraction: Annotated[float | None, typer.Option(
        help="Share of the images with masks (of all, when none has one) for val, when the "
        "dataset has no split lists (default 0.1).", show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the --val-fraction split.")] = 0,
    masks: Annotated[Path | None, typer.Option(
        help="Folder of ground-truth label PNGs named <image id>.png (optional; any subset).")] = None,
    format: Annotated[str | None, typer.Option(
        "--format", help="coco, yolo or voc (default: detected from --annotations).")] = None,
    classes: Annotated[Path | None, typer.Option(
        help="Class names: a text file (one per line) or a YOLO data.yaml; background is class 0.")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Output folder (default <voc-root>/pipseg; required with --images).")] = None,
    pseudo: Annotated[str, typer.Option(
        help="Pseudo labels to make from boxes, comma-separated: box, grabcut, crf, consensus "
        "(grabcut and crf where they agree, ignore where not), sam (Segment Anything; needs "
        "--sam-checkpoint).")] = "",
    sam_checkpoint: Annotated[Path | None, typer.Option(
        help="SAM checkpoint for --pseudo sam (pipseg download sam-vit-b).")] = None,
    sam_model: Annotated[str | None, typer.Option(
        help="vit_b, vit_l or vit_h (default: read from the checkpoint).")] = None,
    device: DeviceOpt = "auto",
    sbd_root: Annotated[Path | None, typer.Option(
        "--sbd-root", help="SBD folder holding benchmark_RELEASE (adds train_aug).")] = None,
    sdi: Annotated[Path | None, typer.Option(help="Folder of SDI (M&G+) label PNGs.")] = None,
    wssl: Annotated[Path | None, typer.Option(help="Folder of WSSL SegmentationClassBboxCRF PNGs.")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Worker processes (default: all cores).")] = None,
    skip_unknown: Annotated[bool, typer.Option(
        "--skip-unknown", help="Skip objects of classes not in --classes (counted).")] = False,
    strict_boxes: Annotated[bool, typer.Option(
        "--strict-boxes", help="Refuse boxes past the image edge or empty, instead of clipping "
        "and skipping them.")] = False,
    discover: Annotated[bool, typer.Option(
        help="Use SBD/WSSL/SDI found in the `pipseg download` layout when not given.")] = True,
) -> None:  # fmt: skip
    """Check a box-annotated dataset and build splits, pseudo labels and the manifest training reads."""
    with user_errors():
        from pipseg.data.annotations import load_class_names

        if voc_root is None and images is None and annotations is None:
            voc_root = DEFAULT_VOC_ROOT
        kinds = [k.strip() for k in pseudo.split(",") if k.strip()]
        models = _models(kinds, sam_checkpoint, sam_model, device)
        report = _run_with_progress(
            voc_root, models=models, images=images, annotations=annotations, val_images=val_images,
            val_annotations=val_annotations, masks=masks, annotation_format=format,
            val_fraction=val_fraction, seed=seed, out=out,
            pseudo=kinds,
            sbd_root=sbd_root, sdi=sdi, wssl=wssl, workers=workers,
            classes=load_class_names(classes) if classes is not None else None,
            skip_unknown=skip_unknown, strict_boxes=strict_boxes, discover=discover,
        )  # fmt: skip
        console.print(report_table(report))
        _warn(report.warnings)
        console.print(f"wrote {report.manifest_path}")


def _models(
    kinds: list[str], checkpoint: Path | None, model_type: str | None, device: str
) -> dict[str, ModelSource]:
    """The SAM label source, its model loaded (and checked) before anything is written."""
    if "sam" not in kinds:
        if checkpoint is not None or model_type is not None:
            raise fail("--sam-checkpoint and --sam-model go with --pseudo sam")
        return {}
    if checkpoint is None:
        return {}  # prepare_dataset names the missing flag
    from pipseg.labels.sam import SamLabeller, SamSource, load_sam

    with console.status(f"loading {checkpoint}"):
        model = load_sam(checkpoint, model_type, device)
    return {"sam": SamSource(SamLabeller(model))}


def _run_with_progress(voc_root: Path | None, **kwargs: Any) -> PrepareReport:
    """`prepare_dataset` under a progress bar; on a `PrepareError`, the table so far first."""
    from pipseg.data.prepare import PrepareError, prepare_dataset

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=True,
    ) as bar:  # fmt: skip
        tasks: dict[str, int] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if total <= 0:
                return
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        try:
            return prepare_dataset(voc_root, progress=on_progress, on_note=bar.console.print, **kwargs)
        except PrepareError as e:
            bar.stop()
            console.print(report_table(e.report))
            _warn(e.report.warnings)
            raise fail(str(e)) from None


def _warn(lines: list[str]) -> None:
    for line in lines:
        err_console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
