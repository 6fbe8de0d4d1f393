"""Joint training augmentation of image, label map and boxes (PIP.md section 3, section 6 fixes).

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
  of them is left inside (PIP.md section 6).
- flip with p = 0.5: exact mirror ``x -> W - 1 - x`` (PIP.md section 6).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from pipseg.data.labels import IGNORE_INDEX


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


def resize_sample(
    image: np.ndarray, label: np.ndarray, boxes: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rescale image (bilinear), label (nearest at pixel centres) and boxes by ``scale``."""
    h, w = label.shape
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (nw, nh) == (w, h):
        return image, label, boxes
    image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, (nw, nh), interpolation=cv2.INTER_NEAREST_EXACT)
    return image, label, scale_boxes(boxes, nw / w, nh / h, nw, nh)


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
    worker), so runs are reproducible from the torch seed.
    """

    def __init__(
        self,
        crop_size: int,
        scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5),
        flip: bool = True,
        pad_rgb: Sequence[float] = (0.0, 0.0, 0.0),
    ) -> None:
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
        image, label, boxes = resize_sample(image, label, boxes, scale)
        image, label = pad_sample(image, label, c, self.pad_rgb)
        h, w = label.shape
        y, x = self._randint(h - c + 1, generator), self._randint(w - c + 1, generator)
        image, label = image[y : y + c, x : x + c], label[y : y + c, x : x + c]
        boxes = crop_boxes(boxes, x, y, c, c)
        if self.flip and self._randint(2, generator):
            image, label = image[:, ::-1], label[:, ::-1]
            boxes = flip_boxes(boxes, c)
        return np.ascontiguousarray(image), np.ascontiguousarray(label), boxes
