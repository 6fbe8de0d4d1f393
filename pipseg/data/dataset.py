"""The training/validation dataset over a prepared folder, and its collate function.

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
from pipseg.data.manifest import (
    agreed_classes,
    folder_bases,
    load_manifest,
    read_prepared_images,
    read_split,
    source_dirs,
)
from pipseg.data.transforms import TrainAugment
from pipseg.errors import PipsegError

_CV2_PID: int | None = None


def _single_threaded_cv2() -> None:
    """One OpenCV thread per process: DataLoader workers already run in parallel."""
    global _CV2_PID
    if _CV2_PID != os.getpid():
        cv2.setNumThreads(0)
        _CV2_PID = os.getpid()


def _label_index(dirs: Sequence[Path]) -> dict[str, Path]:
    """``id -> label path`` over the source's folders (earlier folders win)."""
    found: dict[str, Path] = {}
    for folder in reversed(list(dirs)):
        if folder.is_dir():
            for entry in os.scandir(folder):
                if entry.name.lower().endswith(".png"):
                    found[entry.name[:-4]] = folder / entry.name
    return found


def dataset_classes(data_cfg: DataConfig, manifest: dict[str, Any], prepared_dir: Path) -> list[str]:
    """The prepared class list; a config that sets ``data.classes`` must agree with it."""
    return agreed_classes(getattr(data_cfg, "classes", None), manifest, prepared_dir)


class SegDataset(Dataset):
    """Images, label maps and boxes of one split of a prepared dataset.

    ``source`` picks the label maps: ``gt``, ``box``, ``grabcut``, ``crf``, ``sdi`` or ``wssl``
    (see `pipseg.data.manifest`). Images, sizes and boxes come from the prepared
    ``annotations.json`` (any image format, whatever the original annotation format was) and
    classes from the manifest. Ground truth is optional per image: with ``source="gt"`` the
    dataset holds only the split's images that have a mask (``unlabelled`` lists the others, so
    a val split without masks gives an empty dataset); every other source must cover its split.

    With ``train=True`` each sample is augmented and cropped to ``data_cfg.crop_size``
    (`TrainAugment`, padding the image with ``pad_rgb``, the model's mean colour); with
    ``train=False`` image and label are returned untouched.

    Each item is ``{"image": uint8 [3,H,W] RGB, "label": uint8 [H,W], "boxes": long [N,5]
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
        self.prepared_dir = data_cfg.prepared_dir
        manifest = load_manifest(self.prepared_dir)
        self.classes = dataset_classes(data_cfg, manifest, self.prepared_dir)
        bases = folder_bases(manifest, self.prepared_dir, getattr(data_cfg, "root", None))
        self.split, self.source, self.train = split, source, train
        ids = read_split(self.prepared_dir, manifest, split)
        labels = _label_index(source_dirs(manifest, source, bases))
        missing = [i for i in ids if i not in labels]
        if missing and source != "gt":
            raise PipsegError(
                f"{self.prepared_dir}: source '{source}' has no label for {len(missing)} of "
                f"{len(ids)} images of split '{split}' (first: {', '.join(missing[:5])}); "
                "run `pipseg prepare` again"
            )
        self.unlabelled = missing
        self.ids = [i for i in ids if i in labels]
        images = read_prepared_images(self.prepared_dir, manifest, bases)
        unknown = [i for i in self.ids if i not in images]
        if unknown:
            raise PipsegError(
                f"{self.prepared_dir}: split '{split}' names {len(unknown)} images that "
                f"annotations.json lacks (first: {', '.join(unknown[:3])}); run `pipseg prepare` again"
            )
        self.images = [images[i] for i in self.ids]
        self.label_paths = [labels[i] for i in self.ids]
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
        record = self.images[index]
        if not record.path.is_file():
            raise PipsegError(
                f"{record.path}: image not found; run `pipseg prepare` to check the dataset"
            )
        image = read_image(record.path)
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
        if (record.width, record.height) != (w, h):
            raise PipsegError(
                f"{record.path}: image is {w}x{h} but was {record.width}x{record.height} when "
                "prepared; run `pipseg prepare` again"
            )
        return image, label, record.boxes

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
