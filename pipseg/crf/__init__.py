"""DenseCRF post-processing (docs/METHOD.md section 4) and the probability files it reads.

`DenseCRF` is the one DenseCRF set-up in pipseg: `pipseg eval --crf`, `pipseg predict --crf`, the
folder runner (`pipseg.crf.folder`) and the ``crf`` pseudo labels (`pipseg.data.pseudo`) all use
it. This module imports light (numpy and the config; pydensecrf when inference runs, no torch, no
`pipseg.data`), so data code may use the class without pulling in the runner.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipseg.config import CRFConfig
from pipseg.errors import PipsegError
from pipseg.io import atomic_write

PROBS_KEY = "probs"  # array name inside <id>.npz files written by `pipseg predict --save-probs`


_DEFAULTS = CRFConfig()


@dataclass(frozen=True)
class DenseCRF:
    """Fully connected CRF (Kraehenbuehl & Koltun) with DeepLab's defaults.

    ``crf(image, probs)`` returns class indices ``[H, W]`` uint8; `refine` returns the
    refined probabilities ``[C, H, W]`` float32.
    """

    # The defaults live in one place, `CRFConfig` (docs/METHOD.md section 4).
    iters: int = _DEFAULTS.iters
    gauss_sxy: float = _DEFAULTS.gauss_sxy
    gauss_weight: float = _DEFAULTS.gauss_weight
    bilateral_sxy: float = _DEFAULTS.bilateral_sxy
    bilateral_srgb: float = _DEFAULTS.bilateral_srgb
    bilateral_weight: float = _DEFAULTS.bilateral_weight
    clip: float = 1e-5  # floor of the probabilities before -log (unary energy)

    @classmethod
    def from_config(cls, cfg: CRFConfig) -> DenseCRF:
        """Build from a `pipseg.config.CRFConfig` (``cfg.crf``)."""
        return cls(**cfg.model_dump())

    def refine(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Mean-field inference: RGB uint8 ``[H, W, 3]`` + probabilities ``[C, H, W]`` -> ``[C, H, W]``."""
        import pydensecrf.densecrf as dcrf

        probs = np.asarray(probs)
        image = np.asarray(image)
        if probs.ndim != 3 or image.shape[:2] != probs.shape[1:] or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"CRF expects image [H, W, 3] and probs [C, H, W] of the same H, W; "
                f"got {image.shape} and {probs.shape}"
            )
        num_classes, height, width = probs.shape
        # pydensecrf wants C-contiguous float32 unaries and a C-contiguous, *writable* uint8 image
        # (its typed memoryviews reject read-only buffers such as arrays viewed from PIL images).
        unary = -np.log(np.clip(probs.astype(np.float32, copy=False), self.clip, 1.0))
        unary = np.ascontiguousarray(unary.reshape(num_classes, -1), dtype=np.float32)
        rgb = np.require(image.astype(np.uint8, copy=False), requirements=["C", "W"])
        crf = dcrf.DenseCRF2D(width, height, num_classes)
        crf.setUnaryEnergy(unary)
        crf.addPairwiseGaussian(sxy=self.gauss_sxy, compat=self.gauss_weight)
        crf.addPairwiseBilateral(
            sxy=self.bilateral_sxy, srgb=self.bilateral_srgb, rgbim=rgb, compat=self.bilateral_weight
        )
        q = crf.inference(self.iters)
        return np.asarray(q, dtype=np.float32).reshape(num_classes, height, width)

    def __call__(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Refined class indices ``[H, W]`` uint8."""
        return self.refine(image, probs).argmax(axis=0).astype(np.uint8)


def refine_on_canvas(
    crf: Callable[[np.ndarray, np.ndarray], np.ndarray], image: np.ndarray, canvas_probs: np.ndarray
) -> np.ndarray:
    """Labels ``[H, W]`` of ``image`` from DenseCRF run as the published code runs it
    (``eval.crf_canvas: padded``, docs/METHOD.md section 6): on the whole padded canvas, the image
    padded bottom/right with black to the probabilities' size, then cropped to the image."""
    height, width = image.shape[:2]
    canvas_h, canvas_w = canvas_probs.shape[1:]
    if canvas_h < height or canvas_w < width:
        raise ValueError(f"canvas {canvas_h}x{canvas_w} is smaller than the image {height}x{width}")
    padded = np.zeros((canvas_h, canvas_w, 3), np.uint8)
    padded[:height, :width] = image
    return np.asarray(crf(padded, canvas_probs))[:height, :width]


def save_probs(path: str | os.PathLike[str], probs: np.ndarray) -> Path:
    """Write probabilities ``[C, H, W]`` as compressed float16 ``.npz`` (key ``probs``), atomically."""
    data = np.ascontiguousarray(probs, dtype=np.float16)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a path
            np.savez_compressed(f, **{PROBS_KEY: data})

    return atomic_write(path, write)


def load_probs(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a ``.npz`` written by `save_probs` as float32 ``[C, H, W]``."""
    try:
        with np.load(path) as npz:
            if PROBS_KEY not in npz.files:
                raise PipsegError(f"{path}: no '{PROBS_KEY}' array; write it with `pipseg predict --save-probs`")
            probs = npz[PROBS_KEY].astype(np.float32)
    except (OSError, ValueError, EOFError) as e:
        raise PipsegError(f"{path}: not a readable probabilities file ({e})") from None
    if probs.ndim != 3:
        raise PipsegError(f"{path}: probabilities must be [C, H, W], got shape {probs.shape}")
    return probs
