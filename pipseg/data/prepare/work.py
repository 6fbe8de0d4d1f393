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
from pipseg.data.pseudo import CONSENSUS_OF, consensus_label, make_pseudo, mark_crowd
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
        return mark_crowd(label, self.crowd)


@dataclass(frozen=True)
class ConsensusTask:
    """Make one consensus label from the ``grabcut`` and ``crf`` labels: read from ``sources``
    where `prepare` already wrote them, else made here (and not kept)."""

    id: str
    image: Path
    dst: Path
    boxes: np.ndarray
    crowd: np.ndarray
    crf: CRFConfig
    sources: tuple[Path, Path]  # the grabcut and crf label files of this image

    def make(self) -> np.ndarray:
        image: np.ndarray | None = None
        labels = []
        for kind, path in zip(CONSENSUS_OF, self.sources, strict=True):
            if path.is_file():
                labels.append(read_label(path))
                continue
            image = read_image(self.image) if image is None else image
            labels.append(mark_crowd(make_pseudo(kind, image, self.boxes, self.crf), self.crowd))
        return consensus_label(*labels)


BuildTask = SbdTask | ConvertTask | CocoMaskTask | PseudoTask | ConsensusTask


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
    # On an image with objects, a map of only 0 and 255: "error" (ground truth: a binary mask),
    # "count" (SDI/WSSL: a label whose objects all became ignore, reported), or None (no check).
    background_only: str | None = None
    gt: Path | None = None


@dataclass(frozen=True)
class CheckResult:
    """One label map checked: the problem, or its confusion counts against the ground truth on
    its labelled pixels (None when not scored), its labelled and total pixels, and whether it
    holds only background and ignore on an image with objects."""

    problem: str | None = None
    counts: np.ndarray | None = None
    labelled: int = 0
    pixels: int = 0
    background_only: bool = False


def check_label(task: CheckTask) -> CheckResult:
    """Read and check one label map (see `CheckResult`)."""
    try:
        label = read_label(task.path)
    except PipsegError as e:
        return CheckResult(str(e))
    w, h = task.width, task.height
    if label.shape != (h, w):
        return CheckResult(f"{task.path}: label is {label.shape[1]}x{label.shape[0]}, image is {w}x{h}")
    values = np.unique(label)
    bad = values[(values >= task.num_classes) & (values != IGNORE_INDEX)]
    if len(bad):
        return CheckResult(
            f"{task.path}: values {bad[:5].tolist()} are not class ids "
            f"(0..{task.num_classes - 1}) or 255; is it an RGB map saved as indices?"
        )
    only = task.background_only is not None and set(values.tolist()) <= {0, IGNORE_INDEX}
    if only and task.background_only == "error" and IGNORE_INDEX in values:
        return CheckResult(f"{task.path}: holds only 0 and 255, a binary mask, not class ids")
    labelled = int((label != IGNORE_INDEX).sum())
    return CheckResult(None, _score(label, task), labelled, label.size, only)


def _score(label: np.ndarray, task: CheckTask) -> np.ndarray | None:
    """Confusion counts against the ground truth on the pixels ``label`` labels (not 255)."""
    if task.gt is None:
        return None
    try:
        gt = read_label(task.gt)
    except PipsegError:
        return None  # the ground-truth check reports it
    c = task.num_classes
    if gt.shape != label.shape or int(gt[gt != IGNORE_INDEX].max(initial=0)) >= c:
        return None  # the ground-truth check reports it
    return confusion_counts(label, np.where(label == IGNORE_INDEX, IGNORE_INDEX, gt), c, IGNORE_INDEX)
