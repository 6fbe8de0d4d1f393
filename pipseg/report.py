"""The evaluation report (`pipseg eval --show-dir`): ``report.html`` with the per-class IoU chart,
the confusion matrix as a heat map, the score table and the worst images, linked to their
overlay and error-map pictures. A plain static page: it opens from disk with no server."""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipseg import visualize as viz
from pipseg.io import atomic_write_text

REPORT_NAME, IOU_PNG, CONFUSION_PNG = "report.html", "iou.png", "confusion.png"


@dataclass(frozen=True)
class ImageResult:
    """One image's score and the pictures written for it (paths relative to the report)."""

    sample_id: str
    miou: float
    picture: str


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
    sid, pic = html.escape(result.sample_id), html.escape(result.picture)
    return (f'<div class="img"><p>{sid}: mIoU {_pct(result.miou)}</p>'
            f'<a href="{pic}"><img src="{pic}" alt="{sid}"></a></div>')  # fmt: skip


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}} td:first-child{{text-align:left}}
img{{max-width:100%}} .img img{{max-height:240px}}</style></head>
<body>
{body}
</body></html>
"""
