"""Pictures of labels and results: overlays, legends, boxes, error maps, contact sheets, charts.

The one home for everything pipseg draws (`predict --overlay`, `eval --show-dir`, `browse`, the
demo's contact sheet). Pure functions over RGB ``uint8 [H, W, 3]`` arrays; the legend is always
drawn beside the picture, never over it, so small images keep every pixel visible.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from pipseg.data.labels import IGNORE_INDEX, VOC_PALETTE
from pipseg.errors import PipsegError
from pipseg.io import atomic_write_bytes

IGNORE_RGB = (224, 224, 224)  # how "ignore" (255) is drawn in label pictures: light grey
IGNORE_NAME = "ignore (255): not scored"
ERROR_COLOURS = {"right": (40, 160, 40), "wrong": (220, 30, 30), "ignored": IGNORE_RGB}
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_colour(cls: int) -> tuple[int, int, int]:
    """The RGB colour of class ``cls`` in every pipseg picture (VOC palette; 255 light grey)."""
    if cls == IGNORE_INDEX:
        return IGNORE_RGB
    return tuple(int(v) for v in VOC_PALETTE[cls])  # type: ignore[return-value]


def label_picture(label: np.ndarray) -> np.ndarray:
    """RGB rendering of a class-index map, ignore (255) in light grey."""
    out = VOC_PALETTE[label].copy()
    out[label == IGNORE_INDEX] = IGNORE_RGB
    return out


def overlay(image: np.ndarray, label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``image`` with every non-background, non-ignore pixel blended with its class colour."""
    if not 0.0 <= alpha <= 1.0:
        raise PipsegError(f"--alpha {alpha}: must lie in 0..1")
    colours = VOC_PALETTE[label].astype(np.float32)
    mask = ((label != 0) & (label != IGNORE_INDEX))[..., None]
    blended = np.where(mask, (1 - alpha) * image + alpha * colours, image)
    return np.ascontiguousarray(blended.round().astype(np.uint8))


def overlay_picture(
    image: np.ndarray, label: np.ndarray, names: Sequence[str], *, alpha: float = 0.5, legend: bool = True
) -> np.ndarray:
    """The `overlay` of ``label`` on ``image``, with a legend of the classes present beside it
    (``legend=False``: the overlay alone, the input's size)."""
    picture = overlay(image, label, alpha)
    if not legend:
        return picture
    return with_legend(picture, legend_rows(label, names), ignore_row=bool((label == IGNORE_INDEX).any()))


def _text_scale(height: int) -> tuple[float, int, int]:
    scale = float(np.clip(height / 600, 0.4, 1.2))
    return scale, max(1, round(scale * 1.5)), int(22 * scale) + 6


def legend_rows(label: np.ndarray | Sequence[np.ndarray], names: Sequence[str]) -> list[tuple[int, str]]:
    """``(class id, name)`` of the classes present in one or more label maps (ignore left out)."""
    maps = [label] if isinstance(label, np.ndarray) else list(label)
    present = sorted({int(c) for m in maps for c in np.unique(m)} - {IGNORE_INDEX})
    return [(c, names[c] if c < len(names) else f"class {c}") for c in present]


def legend_panel(rows: Sequence[tuple[int, str]], height: int, *, ignore_row: bool = False) -> np.ndarray:
    """A white panel ``height`` pixels tall listing a colour swatch and name per class row."""
    items = [(class_colour(cls), name) for cls, name in rows]
    if ignore_row:
        items.append((IGNORE_RGB, IGNORE_NAME))
    return swatch_panel(items, height)


def swatch_panel(items: Sequence[tuple[tuple[int, int, int], str]], height: int) -> np.ndarray:
    """A white panel at least ``height`` pixels tall with one ``(RGB colour, text)`` row per item."""
    scale, thickness, line_h = _text_scale(max(height, 200))
    widths = [cv2.getTextSize(name, _FONT, scale, thickness)[0][0] for _, name in items] or [0]
    width = max(widths) + line_h + 16
    needed = 8 + line_h * len(items)
    panel = np.full((max(height, needed), width, 3), 255, np.uint8)
    for row, (colour, name) in enumerate(items):
        y = 4 + row * line_h
        cv2.rectangle(panel, (6, y + 2), (6 + line_h - 6, y + line_h - 4), tuple(map(int, colour)), -1)
        cv2.rectangle(panel, (6, y + 2), (6 + line_h - 6, y + line_h - 4), (0, 0, 0), 1)
        cv2.putText(panel, name, (line_h + 8, y + line_h - 8), _FONT, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return panel


def error_legend(picture: np.ndarray) -> np.ndarray:
    """An `error_map` picture with its three colours explained beside it."""
    items = [(ERROR_COLOURS[k], text) for k, text in (("right", "right"), ("wrong", "wrong"),
                                                       ("ignored", "ignored (255)"))]  # fmt: skip
    return hstack([picture, swatch_panel(items, picture.shape[0])], gap=0)


def with_legend(picture: np.ndarray, rows: Sequence[tuple[int, str]], *, ignore_row: bool = False) -> np.ndarray:
    """``picture`` with a legend panel to its right (the picture itself is untouched)."""
    if not rows and not ignore_row:
        return picture
    panel = legend_panel(rows, picture.shape[0], ignore_row=ignore_row)
    return hstack([picture, panel], gap=0)


def draw_boxes(image: np.ndarray, boxes: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """``image`` with each box ``(x0, y0, x1, y1, cls)`` (inclusive pixels) outlined in its class
    colour and labelled with its class name."""
    out = np.ascontiguousarray(image.copy())
    scale, thickness, _ = _text_scale(image.shape[0])
    for x0, y0, x1, y1, cls in np.asarray(boxes, dtype=np.int64).reshape(-1, 5):
        colour = class_colour(int(cls))
        cv2.rectangle(out, (int(x0), int(y0)), (int(x1), int(y1)), colour, max(1, thickness))
        name = names[cls] if 0 <= cls < len(names) else f"class {cls}"
        (tw, th), _ = cv2.getTextSize(name, _FONT, scale * 0.8, 1)
        top = max(0, int(y0) - th - 4)
        cv2.rectangle(out, (int(x0), top), (int(x0) + tw + 4, top + th + 4), colour, -1)
        cv2.putText(out, name, (int(x0) + 2, top + th + 1), _FONT, scale * 0.8, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def error_map(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Green where ``pred`` equals ``target``, red where it differs, grey where the target is 255."""
    out = np.empty((*target.shape, 3), np.uint8)
    out[:] = ERROR_COLOURS["wrong"]
    out[pred == target] = ERROR_COLOURS["right"]
    out[target == IGNORE_INDEX] = ERROR_COLOURS["ignored"]
    return out


def titled(picture: np.ndarray, title: str) -> np.ndarray:
    """``picture`` under a white title bar."""
    scale, thickness, line_h = _text_scale(200)
    (tw, _), _ = cv2.getTextSize(title, _FONT, scale, thickness)
    width = max(picture.shape[1], tw + 6)
    bar = np.full((line_h, width, 3), 255, np.uint8)
    cv2.putText(bar, title, (3, line_h - 7), _FONT, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    body = np.full((picture.shape[0], width, 3), 255, np.uint8)
    body[:, : picture.shape[1]] = picture
    return np.concatenate([bar, body], axis=0)


def hstack(pictures: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Pictures side by side, top-aligned on white, ``gap`` pixels apart."""
    height = max(p.shape[0] for p in pictures)
    cells = []
    for i, p in enumerate(pictures):
        cell = np.full((height, p.shape[1] + (gap if i < len(pictures) - 1 else 0), 3), 255, np.uint8)
        cell[: p.shape[0], : p.shape[1]] = p
        cells.append(cell)
    return np.concatenate(cells, axis=1)


def vstack(pictures: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Pictures one under another, left-aligned on white, ``gap`` pixels apart."""
    width = max(p.shape[1] for p in pictures)
    cells = []
    for i, p in enumerate(pictures):
        cell = np.full((p.shape[0] + (gap if i < len(pictures) - 1 else 0), width, 3), 255, np.uint8)
        cell[: p.shape[0], : p.shape[1]] = p
        cells.append(cell)
    return np.concatenate(cells, axis=0)


def contact_sheet(
    rows: Sequence[Sequence[np.ndarray]],
    titles: Sequence[str],
    legend: Sequence[tuple[int, str]] = (),
    *,
    ignore_row: bool = True,
) -> np.ndarray:
    """One row per image, one titled column per view, a class legend (with ignore) on the right."""
    lines = [hstack([titled(cell, title) for cell, title in zip(row, titles, strict=True)]) for row in rows]
    sheet = vstack(lines)
    return with_legend(sheet, legend, ignore_row=ignore_row) if legend or ignore_row else sheet


def resize_to_height(picture: np.ndarray, height: int, *, nearest: bool = False) -> np.ndarray:
    """``picture`` scaled to ``height`` rows, aspect kept."""
    h, w = picture.shape[:2]
    width = max(1, round(w * height / h))
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return cv2.resize(picture, (width, height), interpolation=interp)


def encode(picture: np.ndarray, suffix: str) -> bytes:
    """PNG or JPEG bytes of an RGB picture."""
    params = [cv2.IMWRITE_JPEG_QUALITY, 90] if suffix.lower() in (".jpg", ".jpeg") else []
    ok, data = cv2.imencode(suffix, cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise PipsegError(f"could not encode a {suffix} picture")
    return data.tobytes()


def write_picture(path: str | os.PathLike[str], picture: np.ndarray) -> None:
    """Write an RGB picture atomically as PNG or JPEG (by the path's suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, encode(picture, path.suffix))


def confusion_figure(matrix: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """The row-normalised confusion matrix (rows = ground truth) as a heat map picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix, dtype=np.float64)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.45 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rates, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    if len(names) <= 25:
        for (t, p), v in np.ndenumerate(rates):
            ax.text(p, t, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < 0.6 else "k")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the row's pixels")
    return _figure_to_rgb(fig)


def iou_figure(iou: Sequence[float], names: Sequence[str]) -> np.ndarray:
    """Per-class IoU (in %) as a horizontal bar chart picture; NaN classes (absent) shown empty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [0.0 if v != v else 100 * v for v in iou]
    fig, ax = plt.subplots(figsize=(6, max(2.5, 0.3 * len(names) + 1)))
    colours = [np.array(class_colour(c)) / 255 for c in range(len(names))]
    ax.barh(range(len(names)), values, color=colours, edgecolor="k", linewidth=0.5)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU (%)")
    for y, v in enumerate(iou):
        ax.text(1 if v != v else 100 * v + 1, y, "absent" if v != v else f"{100 * v:.1f}", va="center", fontsize=7)
    return _figure_to_rgb(fig)


def _figure_to_rgb(fig) -> np.ndarray:  # noqa: ANN001 - matplotlib Figure
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    plt.close(fig)
    return np.ascontiguousarray(rgba[..., :3])
