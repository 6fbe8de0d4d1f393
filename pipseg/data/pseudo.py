"""Pseudo label maps from boxes: filled boxes, GrabCut, a box-prior DenseCRF, and the consensus
of GrabCut and DenseCRF.

All makers take 0-based inclusive boxes ``int [N,5] (x0, y0, x1, y1, cls)`` and return a uint8
``[H, W]`` class map (0 = background, 255 = ignore). Where boxes overlap, smaller boxes are drawn
on top (an object inside a larger one is usually in front of it): `paint_order` is that order for
every label source, the model-run ones (`pipseg.labels`) included.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from pipseg.config import CRFConfig
from pipseg.crf import DenseCRF
from pipseg.data.labels import IGNORE_INDEX

PSEUDO_KINDS: tuple[str, ...] = ("box", "grabcut", "crf", "consensus")
CONSENSUS_OF: tuple[str, str] = ("grabcut", "crf")  # the two sources `consensus_label` combines
MIN_KEEP = 0.15  # GrabCut/CRF results keeping less of a box than this fall back to the filled box


def paint_order(boxes: np.ndarray) -> np.ndarray:
    """Indices of ``boxes`` largest first (stable), so smaller boxes are painted on top."""
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    return np.argsort(-area, kind="stable")


def _largest_first(boxes: np.ndarray) -> np.ndarray:
    return boxes[paint_order(boxes)]


def mark_crowd(label: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """``label`` with its background inside the crowd boxes ``int [M, 4]`` set to ignore (255),
    in place; pixels an object box gave a class keep it."""
    for x0, y0, x1, y1 in np.asarray(crowd, np.int64).reshape(-1, 4).tolist():
        region = label[y0 : y1 + 1, x0 : x1 + 1]
        region[region == 0] = IGNORE_INDEX
    return label


def box_label(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Every box filled with its class, smaller boxes on top; the rest is background."""
    label = np.zeros((height, width), np.uint8)
    for x0, y0, x1, y1, cls in _largest_first(boxes).tolist():
        label[y0 : y1 + 1, x0 : x1 + 1] = cls
    return label


def _paint(label: np.ndarray, box: list[int], inside: np.ndarray) -> None:
    """Paint ``inside`` (a mask of the box region) with the box class, or the whole box when it
    keeps less than `MIN_KEEP` of it."""
    x0, y0, x1, y1, cls = box
    region = label[y0 : y1 + 1, x0 : x1 + 1]
    if inside.sum() < MIN_KEEP * inside.size:
        region[:] = cls
    else:
        region[inside] = cls


def grabcut_label(image: np.ndarray, boxes: np.ndarray, iters: int = 5) -> np.ndarray:
    """GrabCut seeded by each box (rectangle init, ``iters`` iterations), largest box first.

    The OpenCV RNG is reseeded per box so results do not depend on worker scheduling.
    """
    h, w = image.shape[:2]
    bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    label = np.zeros((h, w), np.uint8)
    for box in _largest_first(boxes).tolist():
        x0, y0, x1, y1, _ = box
        bw, bh = x1 - x0 + 1, y1 - y0 + 1
        inside = np.zeros((bh, bw), bool)
        # GrabCut needs background pixels outside the rectangle and a box of some size.
        if bw >= 3 and bh >= 3 and bw * bh < h * w:
            mask = np.zeros((h, w), np.uint8)
            bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
            cv2.setRNGSeed(0)
            try:
                cv2.grabCut(bgr, mask, (x0, y0, bw, bh), bgd, fgd, iters, cv2.GC_INIT_WITH_RECT)
                sub = mask[y0 : y1 + 1, x0 : x1 + 1]
                inside = (sub == cv2.GC_FGD) | (sub == cv2.GC_PR_FGD)
            except cv2.error:
                inside[:] = False  # degenerate colour model: fall back to the box
        _paint(label, box, inside)
    return label


def box_prior(boxes: np.ndarray, height: int, width: int, eps: float = 1e-3) -> np.ndarray:
    """Per-pixel probabilities ``[1 + N, H, W]`` (background, then one label per box).

    Outside all boxes background gets ``1 - eps``. Inside a box its label scores
    ``0.5 + 0.3 * (1 - d^2)`` with ``d`` the normalised elliptical distance from the box centre
    (objects fill box centres more than corners) against background ``1 - that``; a pixel in
    several boxes shares between them. Columns are normalised to sum to 1.
    """
    n = len(boxes)
    scores = np.full((1 + n, height, width), eps, np.float32)
    scores[0] = 1.0 - eps
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    for k, (x0, y0, x1, y1, _) in enumerate(boxes.tolist()):
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        rx, ry = max((x1 - x0 + 1) / 2, 0.5), max((y1 - y0 + 1) / 2, 0.5)
        sl = np.s_[y0 : y1 + 1, x0 : x1 + 1]
        d2 = np.clip(((xs[sl] - cx) / rx) ** 2 + ((ys[sl] - cy) / ry) ** 2, 0, 1)
        fg = 0.5 + 0.3 * (1 - d2)
        scores[1 + k][sl] = fg
        scores[0][sl] = np.minimum(scores[0][sl], 1 - fg)
    return scores / scores.sum(0, keepdims=True)


def crf_label(image: np.ndarray, boxes: np.ndarray, crf: CRFConfig | None = None) -> np.ndarray:
    """`DenseCRF` (docs/METHOD.md section 4 kernels, ``crf`` settings) over the box prior (`box_prior`).

    Labels are background plus one per box; after inference a pixel keeps a box's class only
    inside that box, and a box that keeps less than `MIN_KEEP` of its area is filled.
    """
    h, w = image.shape[:2]
    label = np.zeros((h, w), np.uint8)
    if len(boxes) == 0:
        return label
    boxes = _largest_first(boxes)
    refined = DenseCRF.from_config(crf or CRFConfig()).refine(image, box_prior(boxes, h, w))
    winner = refined.argmax(0)  # not DenseCRF's uint8 labels: there may be more than 255 boxes
    for k, box in enumerate(boxes.tolist()):
        x0, y0, x1, y1, _ = box
        _paint(label, box, winner[y0 : y1 + 1, x0 : x1 + 1] == 1 + k)
    return label


def consensus_label(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Where two labels of the same boxes agree, their value; where they disagree, ignore (255).

    Both labels are background outside every box, so the result is too; inside a box a pixel
    keeps its class only where both sources give it (the idea of SDI's "M&G+" labels, from
    boxes alone).
    """
    return np.where(first == second, first, IGNORE_INDEX).astype(np.uint8)


def make_pseudo(
    kind: str, image: np.ndarray, boxes: np.ndarray, crf: CRFConfig | None = None
) -> np.ndarray:
    """The pseudo label of ``kind`` (one of `PSEUDO_KINDS`) for one image."""
    makers: dict[str, Callable[[], np.ndarray]] = {
        "box": lambda: box_label(boxes, *image.shape[:2]),
        "grabcut": lambda: grabcut_label(image, boxes),
        "crf": lambda: crf_label(image, boxes, crf),
        "consensus": lambda: consensus_label(grabcut_label(image, boxes), crf_label(image, boxes, crf)),
    }
    if kind not in makers:
        raise ValueError(f"unknown pseudo label kind '{kind}' (known: {', '.join(PSEUDO_KINDS)})")
    return makers[kind]()
