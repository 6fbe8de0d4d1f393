"""Joint training augmentation of image, label map and boxes (docs/METHOD.md sections 3 and 6).

Steps, in order: random scale, pad bottom/right to the crop size, random crop, horizontal flip.
Boxes are 0-based inclusive integer corners ``(x0, y0, x1, y1, cls)`` throughout.

The geometry is written directly with OpenCV on numpy arrays rather than with torchvision
transforms v2: v2 boxes are exclusive-ended floats that it rounds on its own terms, and its
nearest resize of masks samples differently from OpenCV's ``INTER_NEAREST_EXACT``. Doing it here
keeps integer semantics exact (a box still encloses exactly the label pixels it enclosed) and is
faster per sample on CPU workers:

- scale by ``s`` to ``W' = round(W*s)``, ``H' = round(H*s)``; image bilinear, label nearest at
  pixel centres (source pixel ``floor((x' + 0.5) * W / W')``). With ``sx = W'/W`` a box becomes
  ``x0' = floor(x0 * sx)``, ``x1' = ceil((x1 + 1) * sx) - 1`` clipped to ``W' - 1`` (same for y):
  every output pixel sampled from inside the box lands inside the scaled box.
- pad bottom/right to ``crop`` with the padding colour (image) and 255 (label); boxes unchanged.
- crop at a uniform random offset; boxes shifted, clipped to the crop, and dropped when nothing
  of them is left inside (docs/METHOD.md section 6).
- flip with p = 0.5: exact mirror ``x -> W - 1 - x`` (docs/METHOD.md section 6).

That is ``geometry="exact"``, the default. ``geometry="published"`` (``data.box_geometry``,
docs/METHOD.md section 6) reproduces the authors' training code instead, step for step:

- scale to ``W' = int(W*s)``, ``H' = int(H*s)`` (truncated); boxes ``x -> int(x * s)``, not
  clipped to the scaled image (the published code does not clip them there either).
- crop: boxes shifted and clipped to ``[0, crop - 1]``, and all of them kept: a box wholly
  outside the crop becomes a one-pixel line (or point) on the crop edge and still takes part
  in both loss terms (`pipseg.losses` counts any box with ``x1 >= x0`` and ``y1 >= y0``).
- flip: ``x -> crop - x``. That can put a coordinate at ``crop``, one past the crop; it is
  clipped to ``crop - 1``, which maps to the same logit-grid column under `to_logit_grid`
  (both land on ``W - 1`` whenever the grid is no wider than the crop), so the loss sees exactly
  the boxes the published loss sees while every box stays inside its image.

Label resizing (nearest at pixel centres, as PIL's ``NEAREST`` of the published code) and image
resizing (bilinear) are the same in both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np
import torch

from pipseg.data.labels import IGNORE_INDEX

BoxGeometry = Literal["exact", "published"]
BOX_GEOMETRIES: tuple[str, ...] = ("exact", "published")


def scale_boxes(boxes: np.ndarray, sx: float, sy: float, width: int, height: int) -> np.ndarray:
    """Scale inclusive boxes by ``(sx, sy)`` so they still enclose their pixels, clipped to the
    new ``width x height``."""
    out = boxes.copy()
    if len(out):
        out[:, 0] = np.floor(boxes[:, 0] * sx)
        out[:, 1] = np.floor(boxes[:, 1] * sy)
        out[:, 2] = np.ceil((boxes[:, 2] + 1) * sx) - 1
        out[:, 3] = np.ceil((boxes[:, 3] + 1) * sy) - 1
        out[:, 0:4:2] = out[:, 0:4:2].clip(0, width - 1)
        out[:, 1:4:2] = out[:, 1:4:2].clip(0, height - 1)
    return out


def crop_boxes(boxes: np.ndarray, x: int, y: int, width: int, height: int) -> np.ndarray:
    """Shift boxes into the crop at ``(x, y)`` of size ``width x height``, clip them, and drop
    those with no area left inside."""
    out = boxes.copy()
    out[:, 0:4:2] -= x
    out[:, 1:4:2] -= y
    keep = (out[:, 2] >= 0) & (out[:, 0] < width) & (out[:, 3] >= 0) & (out[:, 1] < height)
    out = out[keep]
    out[:, 0:4:2] = out[:, 0:4:2].clip(0, width - 1)
    out[:, 1:4:2] = out[:, 1:4:2].clip(0, height - 1)
    return out


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Mirror boxes horizontally in an image ``width`` wide: ``x -> width - 1 - x``."""
    out = boxes.copy()
    out[:, 0] = width - 1 - boxes[:, 2]
    out[:, 2] = width - 1 - boxes[:, 0]
    return out


def scale_boxes_published(boxes: np.ndarray, scale: float) -> np.ndarray:
    """The published scaling: every corner ``x -> int(x * scale)`` (truncated), unclipped."""
    out = boxes.copy()
    out[:, :4] = np.trunc(boxes[:, :4] * float(scale))
    return out


def clip_boxes_published(boxes: np.ndarray, x: int, y: int, size: int) -> np.ndarray:
    """The published crop: shift boxes into the ``size x size`` crop at ``(x, y)`` and clip
    them to it, keeping every box (one wholly outside becomes a line on the crop edge)."""
    out = boxes.copy()
    out[:, 0:4:2] -= x
    out[:, 1:4:2] -= y
    out[:, :4] = out[:, :4].clip(0, size - 1)
    return out


def flip_boxes_published(boxes: np.ndarray, width: int) -> np.ndarray:
    """The published flip ``x -> width - x``, then clipped to ``width - 1`` (the same logit-grid
    column as ``width``; see the module docstring)."""
    out = boxes.copy()
    out[:, 0] = np.minimum(width - boxes[:, 2], width - 1)
    out[:, 2] = np.minimum(width - boxes[:, 0], width - 1)
    return out


def resize_sample(
    image: np.ndarray,
    label: np.ndarray,
    boxes: np.ndarray,
    scale: float,
    geometry: BoxGeometry = "exact",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rescale image (bilinear), label (nearest at pixel centres) and boxes by ``scale``.

    ``geometry="exact"`` rounds the new size and encloses the boxes' pixels; ``"published"``
    truncates both (see the module docstring).
    """
    h, w = label.shape
    published = geometry == "published"
    size = int if published else round
    nw, nh = max(1, size(w * scale)), max(1, size(h * scale))
    if published:
        boxes = scale_boxes_published(boxes, scale)
    if (nw, nh) == (w, h):
        return image, label, boxes
    image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, (nw, nh), interpolation=cv2.INTER_NEAREST_EXACT)
    if not published:
        boxes = scale_boxes(boxes, nw / w, nh / h, nw, nh)
    return image, label, boxes


def pad_sample(
    image: np.ndarray, label: np.ndarray, size: int, pad_rgb: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Pad bottom/right up to ``size`` (image with ``pad_rgb``, label with 255)."""
    h, w = label.shape
    ph, pw = max(size - h, 0), max(size - w, 0)
    if ph == 0 and pw == 0:
        return image, label
    colour = [float(round(c)) for c in pad_rgb]
    image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=colour)
    label = cv2.copyMakeBorder(label, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=IGNORE_INDEX)
    return image, label


class TrainAugment:
    """Random scale, pad, crop and flip of ``(image RGB [H,W,3], label [H,W], boxes [N,5])``.

    Random draws come from ``generator`` (or torch's global RNG, which DataLoader seeds per
    worker), so runs are reproducible from the torch seed. ``geometry`` is ``"exact"``
    (pipseg's) or ``"published"`` (the authors' code, docs/METHOD.md section 6); both make the
    same random draws.
    """

    def __init__(
        self,
        crop_size: int,
        scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5),
        flip: bool = True,
        pad_rgb: Sequence[float] = (0.0, 0.0, 0.0),
        geometry: BoxGeometry = "exact",
    ) -> None:
        if geometry not in BOX_GEOMETRIES:
            raise ValueError(
                f"TrainAugment: geometry must be one of {BOX_GEOMETRIES}, got {geometry!r}"
            )
        self.geometry = geometry
        self.crop_size = int(crop_size)
        self.scales = [float(s) for s in scales]
        self.flip = flip
        self.pad_rgb = tuple(float(c) for c in pad_rgb)

    def _randint(self, high: int, generator: torch.Generator | None) -> int:
        """Uniform integer in ``[0, high)``."""
        return int(torch.randint(high, (1,), generator=generator)) if high > 1 else 0

    def __call__(
        self,
        image: np.ndarray,
        label: np.ndarray,
        boxes: np.ndarray,
        generator: torch.Generator | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return the augmented ``(image [c,c,3], label [c,c], boxes [K,5])`` with c = crop."""
        c = self.crop_size
        scale = self.scales[self._randint(len(self.scales), generator)]
        published = self.geometry == "published"
        image, label, boxes = resize_sample(image, label, boxes, scale, self.geometry)
        image, label = pad_sample(image, label, c, self.pad_rgb)
        h, w = label.shape
        y, x = self._randint(h - c + 1, generator), self._randint(w - c + 1, generator)
        image, label = image[y : y + c, x : x + c], label[y : y + c, x : x + c]
        boxes = clip_boxes_published(boxes, x, y, c) if published else crop_boxes(boxes, x, y, c, c)
        if self.flip and self._randint(2, generator):
            image, label = image[:, ::-1], label[:, ::-1]
            boxes = flip_boxes_published(boxes, c) if published else flip_boxes(boxes, c)
        return np.ascontiguousarray(image), np.ascontiguousarray(label), boxes
