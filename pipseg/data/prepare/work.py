"""Work done per image in `prepare`'s worker processes: make one label file, or check one.

Each task is a small frozen dataclass; `build_label` and `check_label` are the functions
`pipseg.parallel.run_tasks` runs, returning problems as strings rather than raising.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipseg.config import CRFConfig
from pipseg.data.coco import coco_label
from pipseg.data.images import read_image
from pipseg.data.labels import IGNORE_INDEX, read_label, write_label
from pipseg.data.pseudo import make_pseudo
from pipseg.errors import PipsegError
from pipseg.metrics import confusion_counts


def init_worker() -> None:
    """One OpenCV thread per worker process: the pool is the parallelism."""
    cv2.setNumThreads(1)


def read_sbd_label(path: Path) -> np.ndarray:
    """The class map ``GTcls.Segmentation`` of an SBD ``cls/<id>.mat`` file as uint8."""
    from scipy.io import loadmat  # heavy import, only needed with --sbd-root

    try:
        mat = loadmat(str(path), squeeze_me=True, struct_as_record=False)
        seg = np.asarray(mat["GTcls"].Segmentation)
    except (OSError, KeyError, AttributeError, ValueError, TypeError) as e:
        raise PipsegError(
            f"{path}: not an SBD GTcls .mat file ({e.__class__.__name__}: {e})"
        ) from None
    if seg.ndim != 2 or seg.min() < 0 or seg.max() > 255:
        raise PipsegError(f"{path}: GTcls.Segmentation is not a 2-D class map")
    return seg.astype(np.uint8)


@dataclass(frozen=True)
class SbdTask:
    """Convert one SBD ``.mat`` ground truth to a label PNG."""

    id: str
    mat: Path
    dst: Path

    def make(self) -> np.ndarray:
        return read_sbd_label(self.mat)


@dataclass(frozen=True)
class ConvertTask:
    """Convert one external label PNG (palette, gray or VOC-coloured RGB) to class indices."""

    id: str
    src: Path
    dst: Path

    def make(self) -> np.ndarray:
        return read_label(self.src)


@dataclass(frozen=True)
class CocoMaskTask:
    """Draw one image's COCO segmentations into a ground-truth label PNG."""

    id: str
    dst: Path
    width: int
    height: int
    segments: tuple[tuple[int, Any], ...]

    def make(self) -> np.ndarray:
        try:
            return coco_label(self.segments, self.height, self.width)
        except (ValueError, TypeError, KeyError) as e:
            raise PipsegError(f"{self.id}: COCO segmentation not decodable ({e})") from None


@dataclass(frozen=True)
class PseudoTask:
    """Make one pseudo label from boxes; crowd regions become ignore where it says background."""

    kind: str
    id: str
    image: Path
    dst: Path
    boxes: np.ndarray
    crowd: np.ndarray
    crf: CRFConfig

    def make(self) -> np.ndarray:
        label = make_pseudo(self.kind, read_image(self.image), self.boxes, self.crf)
        for x0, y0, x1, y1 in self.crowd.tolist():
            region = label[y0 : y1 + 1, x0 : x1 + 1]
            region[region == 0] = IGNORE_INDEX
        return label


BuildTask = SbdTask | ConvertTask | CocoMaskTask | PseudoTask


def build_label(task: BuildTask) -> str | None:
    """Make and write one label file; returns the problem, or None."""
    try:
        write_label(task.dst, task.make())
    except PipsegError as e:
        return str(e)
    except OSError as e:
        return f"{task.dst}: cannot write ({e.strerror or e}); check free space and permissions"
    return None


@dataclass(frozen=True)
class CheckTask:
    """Check one label map against its image; score it against ``gt`` when given."""

    id: str
    path: Path
    width: int
    height: int
    num_classes: int
    binary_check: bool  # flag a map of only 0 and 255 (an external binary mask) on an image with objects
    gt: Path | None = None


def check_label(task: CheckTask) -> tuple[str | None, np.ndarray | None]:
    """``(problem or None, confusion counts [C, C] against gt or None)``."""
    try:
        label = read_label(task.path)
    except PipsegError as e:
        return str(e), None
    w, h = task.width, task.height
    if label.shape != (h, w):
        return f"{task.path}: label is {label.shape[1]}x{label.shape[0]}, image is {w}x{h}", None
    values = np.unique(label)
    bad = values[(values >= task.num_classes) & (values != IGNORE_INDEX)]
    if len(bad):
        return (
            f"{task.path}: values {bad[:5].tolist()} are not class ids "
            f"(0..{task.num_classes - 1}) or 255; is it an RGB map saved as indices?"
        ), None
    if task.binary_check and set(values.tolist()) <= {0, IGNORE_INDEX} and IGNORE_INDEX in values:
        return f"{task.path}: holds only 0 and 255, a binary mask, not class ids", None
    return None, _score(label, task)


def _score(label: np.ndarray, task: CheckTask) -> np.ndarray | None:
    if task.gt is None:
        return None
    try:
        gt = read_label(task.gt)
    except PipsegError:
        return None  # the ground-truth check reports it
    c = task.num_classes
    if gt.shape != label.shape or int(gt[gt != IGNORE_INDEX].max(initial=0)) >= c:
        return None  # the ground-truth check reports it
    pred = np.where(label == IGNORE_INDEX, 0, label)  # scored like `pipseg eval`: ignore -> bg
    return confusion_counts(pred, gt, c, IGNORE_INDEX)
