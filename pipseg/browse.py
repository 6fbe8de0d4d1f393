"""Contact sheets of a prepared dataset (`pipseg browse`): each image with its boxes, every label
source side by side (pseudo labels, and the ground truth where it exists), a class legend, and
the images sorted worst-first by how well their pseudo labels match the ground truth."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipseg import visualize as viz
from pipseg.data.images import read_image
from pipseg.data.labels import IGNORE_INDEX, read_label
from pipseg.data.manifest import (
    folder_bases,
    load_manifest,
    read_prepared_images,
    read_split,
    source_dirs,
)
from pipseg.errors import PipsegError
from pipseg.metrics import confusion_counts, scores_from_matrix

SHEET_NAME = "sheet_{:03d}.png"


@dataclass(frozen=True)
class BrowsedImage:
    """One row of a sheet: the image id, its pseudo labels' mean image mIoU against ground truth
    (NaN without a mask), and the sheet it is on."""

    sample_id: str
    miou: float
    sheet: Path


def browse_dataset(
    prepared_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    split: str | None = None,
    sources: Sequence[str] | None = None,
    per_sheet: int = 8,
    limit: int | None = None,
    height: int = 160,
    progress: Callable[[int, int], None] | None = None,
) -> list[BrowsedImage]:
    """Write ``sheet_000.png``, ... into ``out_dir`` (``per_sheet`` images each, cells ``height``
    pixels tall) and return the rows, worst pseudo labels first (images without ground truth last).
    ``sources`` defaults to every pseudo-label source the manifest lists."""
    prepared_dir = Path(prepared_dir).expanduser()
    manifest = load_manifest(prepared_dir)
    bases = folder_bases(manifest, prepared_dir)
    records = read_prepared_images(prepared_dir, manifest, bases)
    ids = read_split(prepared_dir, manifest, split) if split else sorted(records)
    known = [s for s in manifest.get("sources", {}) if s != "gt"]
    chosen = list(sources) if sources else known
    dirs = {s: source_dirs(manifest, s, bases, where=f"--source {s}") for s in chosen}
    gt_dirs = source_dirs(manifest, "gt", bases) if "gt" in manifest.get("sources", {}) else []
    classes = list(manifest["classes"])
    scored = []
    for done, sample_id in enumerate(ids, 1):
        labels = {s: _find_label(d, sample_id) for s, d in dirs.items()}
        gt = _find_label(gt_dirs, sample_id)
        scored.append((sample_id, _pseudo_miou(labels, gt, len(classes))))
        if progress is not None:
            progress(done, 2 * len(ids))
    scored.sort(key=lambda item: (math.isnan(item[1]), item[1]))
    scored = scored[:limit] if limit is not None else scored
    out_dir = Path(out_dir)
    result: list[BrowsedImage] = []
    for start in range(0, len(scored), per_sheet):
        path = out_dir / SHEET_NAME.format(start // per_sheet)
        chunk = scored[start : start + per_sheet]
        rows = [_row(records[i], i, miou, dirs, gt_dirs, classes, height) for i, miou in chunk]
        viz.write_picture(path, _sheet(rows, classes, height))
        result += [BrowsedImage(i, miou, path) for i, miou in chunk]
        if progress is not None:
            progress(len(ids) + start + len(chunk), len(ids) + len(scored))
    if not result:
        raise PipsegError(f"{prepared_dir}: no images to show{f' in split {split}' if split else ''}")
    return result


def _find_label(dirs: Sequence[Path], sample_id: str) -> np.ndarray | None:
    for folder in dirs:
        path = folder / f"{sample_id}.png"
        if path.is_file():
            return read_label(path)
    return None


def _image_miou(label: np.ndarray, gt: np.ndarray, num_classes: int) -> float:
    """mIoU on the pixels the source labels (as `prepare` scores it): its 255 pixels are left out."""
    scored = np.where(label == IGNORE_INDEX, IGNORE_INDEX, gt)
    return scores_from_matrix(confusion_counts(label, scored, num_classes, IGNORE_INDEX))["miou"]


def _pseudo_miou(labels: dict[str, np.ndarray | None], gt: np.ndarray | None, num_classes: int) -> float:
    """Mean over the sources of each pseudo label's image mIoU against ``gt`` (NaN without one)."""
    values = [_image_miou(lab, gt, num_classes) for lab in labels.values() if lab is not None and gt is not None]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _row(record, sample_id, miou, dirs, gt_dirs, classes, height):  # noqa: ANN001, ANN202 - private
    """One sheet row: titled cells (image with boxes, each source, ground truth) and the labels shown."""
    image = read_image(record.path)
    gt = _find_label(gt_dirs, sample_id)
    title = sample_id + ("" if math.isnan(miou) else f"  mean pseudo mIoU {100 * miou:.1f}")
    scale = height / image.shape[0]
    boxes = np.asarray(record.boxes, np.float64).reshape(-1, 5) * [scale, scale, scale, scale, 1]
    cells = [viz.titled(viz.draw_boxes(viz.resize_to_height(image, height), boxes.round(), classes), title)]
    shown = []
    for source, folder in dirs.items():
        label = _find_label(folder, sample_id)
        cells.append(_label_cell(label, gt, source, classes, height, image.shape[:2]))
        shown += [label] if label is not None else []
    if gt is not None:
        cells.append(_label_cell(gt, None, "ground truth", classes, height, image.shape[:2]))
        shown.append(gt)
    return viz.hstack(cells), shown


def _label_cell(label, gt, name, classes, height, size):  # noqa: ANN001, ANN202 - private
    if label is None:
        blank = np.full((*size, 3), 255, np.uint8)
        return viz.titled(viz.resize_to_height(blank, height), f"{name}: missing")
    score = "" if gt is None else f" {100 * _image_miou(label, gt, len(classes)):.1f}"
    return viz.titled(viz.resize_to_height(viz.label_picture(label), height, nearest=True), name + score)


def _sheet(rows, classes, height) -> np.ndarray:  # noqa: ANN001 - private
    pictures = [picture for picture, _ in rows]
    shown = [label for _, labels in rows for label in labels]
    legend = viz.legend_panel(viz.legend_rows(shown, classes) if shown else [], height, ignore_row=True)
    return viz.hstack([viz.vstack(pictures, gap=8), legend], gap=8)
