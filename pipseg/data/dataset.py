"""The training/validation dataset over a prepared VOC-layout folder, and its collate function.

Validation samples keep their full image size, so they cannot be stacked: use a val loader with
``batch_size=1`` and `collate_batch`, or any batch size with `collate_list`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from pipseg.config import DataConfig
from pipseg.data.images import read_image
from pipseg.data.labels import IGNORE_INDEX, read_label
from pipseg.data.manifest import load_manifest, read_split, source_dirs
from pipseg.data.transforms import TrainAugment
from pipseg.data.voc import class_lookup, read_voc_boxes
from pipseg.errors import PipsegError

_CV2_PID: int | None = None


def _single_threaded_cv2() -> None:
    """One OpenCV thread per process: DataLoader workers already run in parallel."""
    global _CV2_PID
    if _CV2_PID != os.getpid():
        cv2.setNumThreads(0)
        _CV2_PID = os.getpid()


def decode_image(path: Path) -> np.ndarray:
    """Decode an image as uint8 RGB ``[H, W, 3]``: OpenCV for speed, `read_image` for odd files
    (16-bit, alpha, palette, unreadable by OpenCV)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None or bgr.dtype != np.uint8:
        return read_image(path)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _label_index(dirs: Sequence[Path]) -> dict[str, Path]:
    """``id -> label path`` over the source's folders (earlier folders win)."""
    found: dict[str, Path] = {}
    for folder in reversed(list(dirs)):
        if folder.is_dir():
            for entry in os.scandir(folder):
                if entry.name.endswith(".png"):
                    found[entry.name[:-4]] = folder / entry.name
    return found


class SegDataset(Dataset):
    """Images, label maps and boxes of one split of a prepared dataset.

    ``source`` picks the label maps: ``gt``, ``box``, ``grabcut``, ``crf``, ``sdi`` or ``wssl``
    (see `pipseg.data.manifest`). With ``train=True`` each sample is augmented and cropped to
    ``data_cfg.crop_size`` (`TrainAugment`, padding the image with ``pad_rgb``, the model's mean
    colour); with ``train=False`` image and label are returned untouched.

    Each item is ``{"image": uint8 [3,H,W] RGB, "label": long [H,W], "boxes": long [N,5]
    (x0, y0, x1, y1, cls) 0-based inclusive image pixels, "id": str}``.
    """

    def __init__(
        self,
        data_cfg: DataConfig,
        split: str,
        source: str,
        train: bool,
        pad_rgb: Sequence[float] = (122.675, 116.669, 104.008),
    ) -> None:
        self.root = data_cfg.root.expanduser()
        self.prepared_dir = data_cfg.prepared_dir
        manifest = load_manifest(self.prepared_dir)
        self.classes = list(data_cfg.classes)
        if [c.strip().lower() for c in manifest["classes"]] != [
            c.strip().lower() for c in self.classes
        ]:
            raise PipsegError(
                f"{self.prepared_dir / 'manifest.json'}: prepared for classes {manifest['classes']}, "
                f"but data.classes is {self.classes}; run `pipseg prepare` with the same classes"
            )
        self.split, self.source, self.train = split, source, train
        self.ids = read_split(self.prepared_dir, manifest, split)
        labels = _label_index(source_dirs(manifest, source, self.root, self.prepared_dir))
        missing = [i for i in self.ids if i not in labels]
        if missing:
            raise PipsegError(
                f"{self.prepared_dir}: source '{source}' has no label for {len(missing)} of "
                f"{len(self.ids)} images of split '{split}' (first: {', '.join(missing[:5])}); "
                "run `pipseg prepare` again"
            )
        self.label_paths = [labels[i] for i in self.ids]
        self.lookup = class_lookup(self.classes)
        # Objects that `prepare --skip-unknown` skipped are skipped here too.
        prepared_skip = bool(manifest.get("settings", {}).get("skip_unknown", False))
        self.skip_unknown = data_cfg.skip_unknown_classes or prepared_skip
        self.augment = (
            TrainAugment(
                data_cfg.crop_size, data_cfg.scales, data_cfg.flip, pad_rgb, data_cfg.box_geometry
            )
            if train
            else None
        )

    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The raw ``(image RGB [H,W,3], label [H,W], boxes [N,5])`` of one sample."""
        _single_threaded_cv2()
        sample_id = self.ids[index]
        image_path = self.root / "JPEGImages" / f"{sample_id}.jpg"
        if not image_path.is_file():
            raise PipsegError(
                f"{image_path}: image not found; run `pipseg prepare` to check the dataset"
            )
        image = decode_image(image_path)
        label = read_label(self.label_paths[index])
        h, w = image.shape[:2]
        top = int(label[label != IGNORE_INDEX].max(initial=0))
        if top >= self.num_classes:
            raise PipsegError(
                f"{self.label_paths[index]}: holds class {top} but the dataset has "
                f"{self.num_classes} classes (0..{self.num_classes - 1}, 255 = ignore); "
                "check data.classes or re-run `pipseg prepare`"
            )
        if label.shape != (h, w):
            raise PipsegError(
                f"{self.label_paths[index]}: label is {label.shape[1]}x{label.shape[0]} but its "
                f"image is {w}x{h}; labels must match their images"
            )
        xml_path = self.root / "Annotations" / f"{sample_id}.xml"
        ann = read_voc_boxes(xml_path, self.lookup, self.skip_unknown)
        if (ann.width, ann.height) != (w, h):
            raise PipsegError(
                f"{xml_path}: <size> says {ann.width}x{ann.height} but the image is {w}x{h}"
            )
        return image, label, ann.boxes

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, label, boxes = self.load(index)
        if self.augment is not None:
            image, label, boxes = self.augment(image, label, boxes)
        return {
            "image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
            # uint8 (ids 0..254, 255 = ignore): 8x less to pin and copy than int64.
            "label": torch.from_numpy(label),
            "boxes": torch.from_numpy(boxes).long(),
            "id": self.ids[index],
        }


def collate_batch(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples of one size into ``image uint8 [B,3,H,W]``, ``label uint8 [B,H,W]``,
    ``boxes long [B,M,5]`` (M = most boxes in a sample, may be 0; padding rows have cls -1 and
    zero corners) and ``ids``."""
    sizes = {tuple(s["image"].shape) for s in samples}
    if len(sizes) > 1:
        raise ValueError(
            f"collate_batch needs samples of one size, got {sorted(sizes)}; use batch_size=1 "
            "or collate_list for full-size validation images"
        )
    most = max((len(s["boxes"]) for s in samples), default=0)
    boxes = torch.zeros((len(samples), most, 5), dtype=torch.long)
    boxes[:, :, 4] = -1
    for i, s in enumerate(samples):
        boxes[i, : len(s["boxes"])] = s["boxes"]
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "label": torch.stack([s["label"] for s in samples]),
        "boxes": boxes,
        "ids": [s["id"] for s in samples],
    }


def collate_list(samples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep samples as a list (validation batches of different image sizes)."""
    return list(samples)
