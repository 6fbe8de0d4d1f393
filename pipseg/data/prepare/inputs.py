"""Where a dataset's parts are: the `--voc-root` short form, `--images/--annotations`, SBD.

`resolve_inputs` turns `prepare`'s flags into one `DatasetInputs` (checking that each folder
exists); `read_split_lists` reads VOC's ``ImageSets/Segmentation`` lists and SBD's, when the
dataset has them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipseg.config import DataConfig
from pipseg.data.annotations import FORMATS, detect_format
from pipseg.data.lists import read_id_list
from pipseg.errors import PipsegError

DEFAULT_VOC_ROOT = DataConfig().root
WSSL_DIR_NAME = "SegmentationClassBboxCRF"
SDI_DIR_NAME = "VOC12_M&G+"
PathArg = str | os.PathLike[str] | None


@dataclass(frozen=True)
class DatasetInputs:
    """Every input folder and file of one `prepare` run (absolute paths, checked to exist)."""

    format: str
    images: Path
    annotations: Path
    out: Path
    val_images: Path | None = None
    val_annotations: Path | None = None
    masks: Path | None = None  # folder of ground-truth label PNGs
    voc_root: Path | None = None
    split_lists: Path | None = None  # a folder holding train.txt and val.txt
    sbd_root: Path | None = None
    sdi: Path | None = None
    wssl: Path | None = None

    @property
    def where(self) -> Path:
        """The dataset as error messages name it."""
        return self.voc_root or self.annotations


@dataclass(frozen=True)
class SplitLists:
    """Split lists given with the dataset (VOC, and SBD's train_aug when given)."""

    train: list[str]
    val: list[str]
    train_aug: list[str]
    sbd_ids: frozenset[str]
    sbd_dir: Path | None


def _path(value: PathArg) -> Path | None:
    return Path(os.path.abspath(Path(value).expanduser())) if value is not None else None


def discover_sources(voc_root: str | os.PathLike[str]) -> dict[str, Path]:
    """Label sources that `pipseg download` (or a manual copy) left in the default layout.

    SBD's ``benchmark_RELEASE`` beside ``VOCdevkit``; WSSL and SDI folders inside the VOC root.
    Returns only those that exist, keyed like the `prepare_dataset` arguments.
    """
    root = Path(voc_root).expanduser()
    candidates = {
        "sbd_root": root.parent.parent / "benchmark_RELEASE",
        "wssl": root / WSSL_DIR_NAME,
        "sdi": root / SDI_DIR_NAME,
    }
    found = {key: path for key, path in candidates.items() if path.is_dir()}
    if "sbd_root" in found:
        found["sbd_root"] = found["sbd_root"].parent
    return found


def _voc_layout(root: Path, masks: Path | None) -> dict[str, Path | None]:
    if not root.is_dir():
        raise PipsegError(f"{root}: dataset folder not found; pass --voc-root the VOC2012 folder")
    absent = [d for d in ("JPEGImages", "Annotations") if not (root / d).is_dir()]
    if absent:
        raise PipsegError(
            f"{root}: not a VOC layout, missing {', '.join(absent)}; pass --voc-root the VOC2012 "
            "folder, or --images and --annotations"
        )
    lists = root / "ImageSets" / "Segmentation"
    return {
        "images": root / "JPEGImages",
        "annotations": root / "Annotations",
        "masks": masks or (root / "SegmentationClass" if (root / "SegmentationClass").is_dir() else None),
        "split_lists": lists if lists.is_dir() else None,
    }


def resolve_inputs(
    voc_root: PathArg = None, *, images: PathArg = None, annotations: PathArg = None,
    val_images: PathArg = None, val_annotations: PathArg = None, masks: PathArg = None,
    annotation_format: str | None = None, out: PathArg = None, sbd_root: PathArg = None,
    sdi: PathArg = None, wssl: PathArg = None, discover: bool = False,
) -> tuple[DatasetInputs, list[str]]:  # fmt: skip
    """Check `prepare`'s input flags and resolve them; returns the inputs and notes (sources
    found in the `pipseg download` layout when ``discover``)."""
    root, notes = _path(voc_root), []
    given = {"sbd_root": _path(sbd_root), "sdi": _path(sdi), "wssl": _path(wssl)}
    if root is not None and (images is not None or annotations is not None):
        raise PipsegError("prepare: pass either --voc-root or --images with --annotations, not both")
    if root is not None:
        parts = _voc_layout(root, _path(masks))
        for key, path in (discover_sources(root) if discover else {}).items():
            if given[key] is None:
                given[key] = path
                notes.append(f"using {path} for --{key.replace('_', '-')} (download layout)")
        fmt, out_dir = annotation_format or "voc", _path(out) or root / "pipseg"
    else:
        if images is None or annotations is None:
            raise PipsegError(
                "prepare: pass --images DIR and --annotations PATH (or --voc-root for a VOC folder)"
            )
        if out is None:
            raise PipsegError("prepare: --out is required with --images/--annotations")
        parts = {"images": _path(images), "annotations": _path(annotations), "masks": _path(masks)}
        fmt, out_dir = annotation_format or detect_format(annotations), _path(out)
    if fmt not in FORMATS:
        raise PipsegError(f"--format: unknown format '{fmt}'; choose from {', '.join(FORMATS)}")
    inputs = DatasetInputs(
        format=fmt, out=out_dir, val_annotations=_path(val_annotations),
        val_images=_path(val_images) or (parts["images"] if val_annotations is not None else None),
        voc_root=root, **parts, **given,  # type: ignore[arg-type]
    )  # fmt: skip
    _check_exist(inputs)
    return inputs, notes


def _check_exist(inputs: DatasetInputs) -> None:
    flags = {
        "--images": inputs.images, "--annotations": inputs.annotations,
        "--val-images": inputs.val_images, "--val-annotations": inputs.val_annotations,
        "--masks": inputs.masks, "--sdi": inputs.sdi, "--wssl": inputs.wssl,
        "--sbd-root": inputs.sbd_root,
    }  # fmt: skip
    for flag, path in flags.items():
        if path is not None and not path.exists():
            raise PipsegError(f"{path}: not found; check {flag}")
    if inputs.sbd_root is not None and inputs.voc_root is None:
        raise PipsegError("--sbd-root: SBD extends a VOC dataset; use it with --voc-root")


def _sbd_dir(sbd_root: Path) -> Path:
    """Accept the folder holding ``benchmark_RELEASE`` or its ``dataset`` folder itself."""
    for candidate in (sbd_root / "benchmark_RELEASE" / "dataset", sbd_root / "dataset", sbd_root):
        if (candidate / "cls").is_dir() and (candidate / "train.txt").is_file():
            return candidate
    raise PipsegError(
        f"{sbd_root}: not an SBD folder (expected benchmark_RELEASE/dataset/cls/*.mat, "
        "train.txt, val.txt); pass --sbd-root the folder that holds benchmark_RELEASE"
    )


def read_split_lists(inputs: DatasetInputs) -> SplitLists | None:
    """VOC's train/val lists (train_aug = SBD train+val + VOC train - VOC val with SBD), or None
    when the dataset has no ``ImageSets/Segmentation``."""
    sets = inputs.split_lists
    if sets is None:
        return None
    for name in ("train", "val"):
        if not (sets / f"{name}.txt").is_file():
            raise PipsegError(f"{sets / (name + '.txt')}: split list not found")
    train, val = read_id_list(sets / "train.txt"), read_id_list(sets / "val.txt")
    if inputs.sbd_root is None:
        return SplitLists(train, val, list(train), frozenset(), None)
    sbd_dir = _sbd_dir(inputs.sbd_root)
    sbd_ids = set(read_id_list(sbd_dir / "train.txt"))
    if (sbd_dir / "val.txt").is_file():
        sbd_ids |= set(read_id_list(sbd_dir / "val.txt"))
    train_aug = sorted((sbd_ids | set(train)) - set(val))
    return SplitLists(train, val, train_aug, frozenset(sbd_ids), sbd_dir)


def fraction_split(
    pool: list[str], everything: list[str], fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """``(train, val)``: ``val`` is a seeded random ``fraction`` of ``pool`` (at least one image),
    ``train`` every other image of ``everything`` in its order."""
    count = max(1, round(fraction * len(pool)))
    chosen = set(np.random.default_rng(seed).choice(sorted(pool), size=count, replace=False))
    val = [i for i in everything if i in chosen]
    return [i for i in everything if i not in chosen], val
