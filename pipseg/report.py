"""The evaluation report (`pipseg eval --show-dir`): ``report.html`` with the per-class IoU chart,
the confusion matrix as a heat map, the score table and the worst images, linked to their
overlay and error-map pictures. A plain static page: it opens from disk with no server."""

from __future__ import annotations

import html
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipseg import visualize as viz
from pipseg.data.images import IMAGE_EXTENSIONS, read_image
from pipseg.data.labels import IGNORE_INDEX, read_label
from pipseg.errors import PipsegError
from pipseg.io import atomic_write_text
from pipseg.metrics import confusion_counts, scores_from_matrix

REPORT_NAME, IOU_PNG, CONFUSION_PNG = "report.html", "iou.png", "confusion.png"
IMAGES_DIR, OVERLAY_SUFFIX, ERRORS_SUFFIX = "images", ".overlay.png", ".errors.png"


@dataclass(frozen=True)
class ImageResult:
    """One image's score and the pictures written for it (paths relative to the report)."""

    sample_id: str
    miou: float
    picture: str
    errors: str = ""  # the error map beside it, if any


def write_report(
    out_dir: str | os.PathLike[str],
    scores: dict[str, Any],
    matrix: np.ndarray,
    names: Sequence[str],
    images: Sequence[ImageResult] = (),
    *,
    title: str = "pipseg evaluation",
    worst: int = 20,
) -> Path:
    """Write the charts and ``report.html`` into ``out_dir``; returns the page's path."""
    out_dir = Path(out_dir)
    viz.write_picture(out_dir / IOU_PNG, viz.iou_figure(scores["iou"], names))
    viz.write_picture(out_dir / CONFUSION_PNG, viz.confusion_figure(matrix, names))
    ranked = sorted(images, key=lambda r: (math.isnan(r.miou), r.miou))[:worst]
    body = [
        f"<h1>{html.escape(title)}</h1>",
        _summary_table(scores),
        "<h2>Per-class IoU</h2>",
        _class_table(scores, names),
        f'<img src="{IOU_PNG}" alt="per-class IoU">',
        "<h2>Confusion matrix</h2><p>Rows: ground truth; columns: prediction; each row sums to 1.</p>",
        f'<img src="{CONFUSION_PNG}" alt="confusion matrix">',
    ]
    if ranked:
        body.append(f"<h2>Worst {len(ranked)} images (by image mIoU)</h2>")
        body += [_image_entry(r) for r in ranked]
    page = _PAGE.format(title=html.escape(title), body="\n".join(body))
    path = out_dir / REPORT_NAME
    atomic_write_text(path, page)
    return path


def _pct(value: float) -> str:
    return "n/a" if value is None or value != value else f"{100 * value:.2f}"


def _summary_table(scores: dict[str, Any]) -> str:
    rows = [("mIoU", scores["miou"]), ("pixel accuracy", scores["pixel_accuracy"]),
            ("mean accuracy", scores["mean_accuracy"]), ("frequency-weighted IoU", scores["fw_iou"])]  # fmt: skip
    cells = "".join(f"<tr><td>{k}</td><td>{_pct(v)}</td></tr>" for k, v in rows)
    return f"<table><tr><th>score</th><th>%</th></tr>{cells}</table>"


def _class_table(scores: dict[str, Any], names: Sequence[str]) -> str:
    cells = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{_pct(iou)}</td><td>{_pct(acc)}</td></tr>"
        for n, iou, acc in zip(names, scores["iou"], scores["accuracy"], strict=True)
    )
    return f"<table><tr><th>class</th><th>IoU %</th><th>accuracy %</th></tr>{cells}</table>"


def _image_entry(result: ImageResult) -> str:
    sid = html.escape(result.sample_id)
    links = "".join(f'<a href="{html.escape(p)}"><img src="{html.escape(p)}" alt="{sid}"></a> '
                    for p in (result.picture, result.errors) if p)  # fmt: skip
    return f'<div class="img"><p>{sid}: mIoU {_pct(result.miou)}</p>{links}</div>'


# ---------------------------------------------------------------------------------------------
# eval --show-dir: pictures per image, the JSON document


class ShowWriter:
    """`eval --show-dir`: per image ``images/<id>.overlay.png`` (the prediction over the image,
    legend beside) and ``images/<id>.errors.png`` (right / wrong / ignored), and each image's
    mIoU for the report. Call it as `pipseg.evaluate.evaluate_model`'s ``on_image``."""

    def __init__(self, out_dir: str | os.PathLike[str], names: Sequence[str], *, alpha: float = 0.5) -> None:
        self.out_dir, self.names, self.alpha = Path(out_dir), list(names), alpha
        self.results: list[ImageResult] = []

    def bind(self, names: Sequence[str]) -> ShowWriter:
        """This writer, naming the classes ``names`` (known once the checkpoint is read)."""
        self.names = list(names)
        return self

    def __call__(self, sample_id: str, image: np.ndarray | None, target: np.ndarray, label: np.ndarray) -> None:
        """Draw one image's pictures (``image`` None: the prediction's colours instead)."""
        over, errors = (f"{IMAGES_DIR}/{sample_id}{suffix}" for suffix in (OVERLAY_SUFFIX, ERRORS_SUFFIX))
        base = image if image is not None else viz.label_picture(label)
        picture = viz.overlay_picture(base, label, self.names, alpha=self.alpha if image is not None else 0.0)
        viz.write_picture(self.out_dir / over, picture)
        viz.write_picture(self.out_dir / errors, viz.error_legend(viz.error_map(label, target)))
        miou = scores_from_matrix(confusion_counts(label, target, len(self.names), IGNORE_INDEX))["miou"]
        self.results.append(ImageResult(sample_id, miou, over, errors))

    def write_report(self, scores: dict[str, Any], *, title: str = "pipseg evaluation") -> Path:
        """``report.html`` with these images (worst first) and ``scores``' charts."""
        matrix = np.asarray(scores["confusion"], dtype=np.int64)
        return write_report(self.out_dir, scores, matrix, self.names, self.results, title=title)


def scores_document(results: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The JSON of `pipseg eval --json`: the scores, per-class IoU and accuracy keyed by class
    name, and the confusion matrix with its row / column names (NaN becomes null)."""

    def one(scores: dict[str, Any]) -> dict[str, Any]:
        doc = {k: v for k, v in scores.items() if k not in ("crf", "confusion")}
        doc["per_class"] = {n: {"iou": i, "accuracy": a}
                            for n, i, a in zip(names, scores["iou"], scores["accuracy"], strict=True)}  # fmt: skip
        if "confusion" in scores:
            doc["confusion"] = {"rows": "ground truth", "columns": "prediction", "classes": list(names),
                                "counts": scores["confusion"]}  # fmt: skip
        return doc

    doc = {"classes": list(names), **one(results)}
    if "crf" in results:
        doc["crf"] = one(results["crf"])
    return _json_safe(doc)


def _json_safe(value: Any) -> Any:
    """NaN (a class absent from ground truth and predictions) -> null: JSON has no NaN."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}} td:first-child{{text-align:left}}
img{{max-width:100%}} .img img{{max-height:240px}}</style></head>
<body>
{body}
</body></html>
"""


def show_folders(
    writer: ShowWriter,
    pred_dir: Path,
    gt_dir: Path,
    ids: Sequence[str],
    *,
    images_dir: Path | None = None,
    crop_padded: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """`eval --pred --gt --show-dir`: the pictures of every scored pair (the overlay on the image
    ``images_dir/<id>.<ext>`` when given, else on the prediction's colours)."""
    for done, sample_id in enumerate(ids, 1):
        gt = read_label(gt_dir / f"{sample_id}.png")
        pred = read_label(pred_dir / f"{sample_id}.png")
        if crop_padded:
            pred = pred[: gt.shape[0], : gt.shape[1]]
        image = None
        if images_dir is not None:
            path = _find_image(images_dir, sample_id)
            image = read_image(path)
            if image.shape[:2] != gt.shape:
                raise PipsegError(f"{path}: image is {image.shape[1]}x{image.shape[0]} but its ground truth "
                                  f"{gt.shape[1]}x{gt.shape[0]}; check --images")  # fmt: skip
        writer(sample_id, image, gt, pred)
        if progress is not None:
            progress(done, len(ids))


def _find_image(folder: Path, sample_id: str) -> Path:
    for ext in sorted(IMAGE_EXTENSIONS):
        for suffix in (ext, ext.upper()):
            if (folder / f"{sample_id}{suffix}").is_file():
                return folder / f"{sample_id}{suffix}"
    raise PipsegError(f"{sample_id}: no image {folder / sample_id}.<jpg|png|...>; check --images")
