"""`pipseg prepare`: check a VOC-layout dataset and build everything training reads from it.

Outputs go under ``out`` (default ``<voc_root>/pipseg``); the dataset's own files are never
touched: split lists ``splits/<name>.txt``, SBD labels ``SegmentationClassAug/<id>.png``,
converted WSSL/SDI labels ``labels/<kind>/<id>.png``, pseudo labels ``pseudo/<kind>/<id>.png``
and, written last and atomically, ``manifest.json`` (layout in `pipseg.data.manifest`).

Every label file is written atomically and skipped when present, so an interrupted run resumes
where it stopped. Any missing, corrupt or ill-formed input stops the run with a `PrepareError`
(listing the first five files and a count) before the manifest is written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipseg import __version__
from pipseg.config import VOC_CLASSES, CRFConfig, DataConfig
from pipseg.data.images import image_size
from pipseg.data.labels import IGNORE_INDEX, read_label, write_label
from pipseg.data.manifest import MANIFEST_FORMAT, MANIFEST_NAME, load_manifest
from pipseg.data.pseudo import PSEUDO_KINDS, make_pseudo
from pipseg.data.voc import class_lookup, read_voc_boxes
from pipseg.errors import PipsegError
from pipseg.io import atomic_write_json, atomic_write_text
from pipseg.parallel import default_workers, pool_context

__all__ = ["PrepareError", "PrepareReport", "SourceReport", "load_manifest", "prepare_dataset"]

Progress = Callable[[str, int, int], None]  # (stage description, done, total)
VOC_DIRS = ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Segmentation")
SPLITS = ("train", "val", "train_aug")


@dataclass
class SourceReport:
    """One label source: label maps found per split, which are missing, and quality vs GT."""

    kind: str
    dirs: list[dict[str, str]]
    counts: dict[str, int] = field(default_factory=dict)
    missing: dict[str, list[str]] = field(default_factory=dict)
    miou: dict[str, float] = field(default_factory=dict)  # split -> mIoU against GT
    written: int = 0  # label files created by this run
    for_splits: tuple[str, ...] = ("train_aug", "train")  # splits it must cover (gt: all)

    @property
    def missing_ids(self) -> list[str]:
        """Ids of the splits this source must cover that have no label map."""
        return list(dict.fromkeys(i for s in self.for_splits for i in self.missing.get(s, [])))


@dataclass
class PrepareReport:
    """What `prepare_dataset` found and built."""

    voc_root: Path
    out_dir: Path
    classes: list[str]
    splits: dict[str, list[str]] = field(default_factory=dict)
    sources: dict[str, SourceReport] = field(default_factory=dict)
    images: int = 0
    annotations: int = 0
    skipped_objects: int = 0
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    manifest_path: Path | None = None

    @property
    def written(self) -> int:
        """Label files created by this run, over all sources."""
        return sum(s.written for s in self.sources.values())


class PrepareError(PipsegError):
    """Missing or corrupt inputs; ``report`` holds what was found so far (for the table)."""

    def __init__(self, message: str, report: PrepareReport) -> None:
        super().__init__(message)
        self.report = report


def _summary(problems: list[str], what: str, where: Path) -> str:
    shown = "; ".join(problems[:5])
    more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
    return (
        f"{where}: {len(problems)} {what}: {shown}{more}; fix them and run `pipseg prepare` again"
    )


def _read_ids(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise PipsegError(f"{path}: cannot read the split list ({e})") from None
    return [line.split()[0] for line in lines if line.strip()]


DEFAULT_VOC_ROOT = DataConfig().root
WSSL_DIR_NAME = "SegmentationClassBboxCRF"
SDI_DIR_NAME = "VOC12_M&G+"


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


def _sbd_dir(sbd_root: Path) -> Path:
    """Accept the folder holding ``benchmark_RELEASE`` or its ``dataset`` folder itself."""
    for candidate in (sbd_root / "benchmark_RELEASE" / "dataset", sbd_root / "dataset", sbd_root):
        if (candidate / "cls").is_dir() and (candidate / "train.txt").is_file():
            return candidate
    raise PipsegError(
        f"{sbd_root}: not an SBD folder (expected benchmark_RELEASE/dataset/cls/*.mat, "
        "train.txt, val.txt); pass --sbd-root the folder that holds benchmark_RELEASE"
    )


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


# ----------------------------------------------------------------------------------------------
# Work done per image (in worker processes): build one label file, or check one label file.


def _init_worker() -> None:
    cv2.setNumThreads(1)


def _build_one(task: tuple[str, str, str, str, Any]) -> tuple[str, str | None]:
    """Create one label file. ``task = (kind, id, source path, target path, extra)``; returns
    ``(id, problem or None)``."""
    kind, sample_id, src, dst, extra = task
    try:
        if kind == "sbd":
            label = read_sbd_label(Path(src))
        elif kind in ("sdi", "wssl"):
            label = read_label(src)  # palette, gray or VOC-coloured RGB -> indices
        else:
            from pipseg.data.dataset import decode_image

            boxes, crf_cfg = extra
            label = make_pseudo(kind, decode_image(Path(src)), boxes, crf_cfg)
        write_label(dst, label)
    except PipsegError as e:
        return sample_id, str(e)
    except OSError as e:
        return sample_id, f"{dst}: cannot write ({e.strerror or e}); check free space and permissions"
    return sample_id, None


def _check_one(
    task: tuple[str, str, tuple[int, int], int, bool, str | None],
) -> tuple[str, str | None, Any]:
    """Check one label map; returns ``(id, problem or None, confusion counts or None)``.

    ``task = (id, label path, (width, height) of the image, number of classes, image has
    objects, GT path to score against or None)``.
    """
    sample_id, path, (w, h), num_classes, has_objects, gt_path = task
    try:
        label = read_label(path)
    except PipsegError as e:
        return sample_id, str(e), None
    if label.shape != (h, w):
        return (
            sample_id,
            f"{path}: label is {label.shape[1]}x{label.shape[0]}, image is {w}x{h}",
            None,
        )
    values = np.unique(label)
    bad = values[(values >= num_classes) & (values != IGNORE_INDEX)]
    if len(bad):
        return (
            sample_id,
            (
                f"{path}: values {bad[:5].tolist()} are not class ids (0..{num_classes - 1}) or 255; "
                "is it an RGB map saved as indices?"
            ),
            None,
        )
    if has_objects and set(values.tolist()) <= {0, IGNORE_INDEX} and IGNORE_INDEX in values:
        return sample_id, f"{path}: holds only 0 and 255, a binary mask, not class ids", None
    if gt_path is None:
        return sample_id, None, None
    try:
        gt = read_label(gt_path)
    except PipsegError:
        return sample_id, None, None  # the GT check reports it
    if gt.shape != label.shape:
        return sample_id, None, None  # the GT check reports it
    valid = gt != IGNORE_INDEX
    pred = np.where(label[valid] == IGNORE_INDEX, 0, label[valid]).astype(np.int64)
    counts = np.bincount(gt[valid].astype(np.int64) * num_classes + pred, minlength=num_classes**2)
    return sample_id, None, counts


def miou_from_confusion(confusion: np.ndarray) -> float:
    """mIoU of a ``[C, C]`` confusion matrix (rows = target), scored like `pipseg eval`."""
    from pipseg.metrics import scores_from_matrix

    return float(scores_from_matrix(confusion)["miou"])


def _run(
    fn: Callable[[Any], Any],
    tasks: list[Any],
    pool: Executor | None,
    stage: str,
    progress: Progress | None,
) -> Iterable[Any]:
    """Apply ``fn`` to ``tasks`` in ``pool`` (or inline), reporting progress."""
    total = len(tasks)
    if progress:
        progress(stage, 0, total)
    results = (
        pool.map(fn, tasks, chunksize=max(1, min(32, total // 64 or 1))) if pool else map(fn, tasks)
    )
    for done, result in enumerate(results, 1):
        if progress:
            progress(stage, done, total)
        yield result


# ----------------------------------------------------------------------------------------------


def prepare_dataset(
    voc_root: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    pseudo: Sequence[str] = (),
    sbd_root: str | os.PathLike[str] | None = None,
    sdi: str | os.PathLike[str] | None = None,
    wssl: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    classes: Sequence[str] | None = None,
    skip_unknown: bool = False,
    crf: CRFConfig | None = None,
    progress: Progress | None = None,
) -> PrepareReport:
    """Check the dataset at ``voc_root`` and build splits, labels and the manifest under ``out``.

    ``pseudo`` lists pseudo label kinds to make from boxes (`PSEUDO_KINDS`); ``sbd_root`` adds
    SBD (train_aug = SBD train+val + VOC train - VOC val); ``sdi``/``wssl`` are folders of label
    PNGs to convert. ``workers`` processes (default: all cores); ``progress(stage, done, total)``
    is called as work proceeds. Raises `PrepareError` (a `PipsegError`) with the report attached
    when inputs are missing or corrupt; the manifest is then not written.
    """
    root = Path(voc_root).expanduser().resolve()
    out_dir = Path(out).expanduser().resolve() if out else root / "pipseg"
    classes = list(classes or VOC_CLASSES)
    kinds = list(dict.fromkeys(pseudo))
    unknown = [k for k in kinds if k not in PSEUDO_KINDS]
    if unknown:
        raise PipsegError(
            f"--pseudo: unknown kind(s) {', '.join(unknown)}; choose from {', '.join(PSEUDO_KINDS)}"
        )
    report = PrepareReport(voc_root=root, out_dir=out_dir, classes=classes)

    # 1. Layout.
    if not root.is_dir():
        raise PipsegError(f"{root}: dataset folder not found; pass --voc-root the VOC2012 folder")
    absent = [d for d in VOC_DIRS if not (root / d).is_dir()]
    extra_dirs = {"--sdi": sdi, "--wssl": wssl}
    absent += [
        f"{flag} {p}" for flag, p in extra_dirs.items() if p and not Path(p).expanduser().is_dir()
    ]
    if absent:
        raise PipsegError(
            f"{root}: not a VOC layout, missing {', '.join(absent)}; pass --voc-root the VOC2012 folder"
        )

    # 2. Splits.
    sets = root / "ImageSets" / "Segmentation"
    for name in ("train", "val"):
        if not (sets / f"{name}.txt").is_file():
            raise PipsegError(f"{sets / (name + '.txt')}: split list not found")
    train, val = _read_ids(sets / "train.txt"), _read_ids(sets / "val.txt")
    sbd_ids: set[str] = set()
    sbd_dir = None
    if sbd_root is not None:
        sbd_dir = _sbd_dir(Path(sbd_root).expanduser())
        sbd_ids = set(_read_ids(sbd_dir / "train.txt"))
        if (sbd_dir / "val.txt").is_file():
            sbd_ids |= set(_read_ids(sbd_dir / "val.txt"))
        train_aug = sorted((sbd_ids | set(train)) - set(val))
    else:
        train_aug = list(train)
        report.notes.append("no --sbd-root: train_aug is the VOC train split")
    report.splits = {"train": train, "val": val, "train_aug": train_aug}
    all_ids = list(dict.fromkeys(train_aug + train + val))

    # 3. Images, annotations, ground truth.
    lookup = class_lookup(classes)
    problems: list[str] = []
    sizes: dict[str, tuple[int, int]] = {}
    boxes: dict[str, np.ndarray] = {}
    for done, sample_id in enumerate(all_ids, 1):
        if progress and (done % 256 == 0 or done == len(all_ids)):
            progress("checking images and annotations", done, len(all_ids))
        try:
            size = image_size(root / "JPEGImages" / f"{sample_id}.jpg")
            ann = read_voc_boxes(root / "Annotations" / f"{sample_id}.xml", lookup, skip_unknown)
        except PipsegError as e:
            problems.append(str(e))
            continue
        if (ann.width, ann.height) != size:
            problems.append(f"{root / 'Annotations' / sample_id}.xml: <size> {ann.width}x{ann.height} "
                            f"differs from the image {size[0]}x{size[1]}")  # fmt: skip
            continue
        sizes[sample_id], boxes[sample_id] = size, ann.boxes
        report.skipped_objects += ann.skipped
    report.images, report.annotations = len(sizes), len(boxes)
    voc_gt = root / "SegmentationClass"
    gt_paths: dict[str, Path] = {}
    sbd_tasks = []
    for sample_id in all_ids:
        if (voc_gt / f"{sample_id}.png").is_file():
            gt_paths[sample_id] = voc_gt / f"{sample_id}.png"
        elif sample_id in sbd_ids and sbd_dir is not None:
            mat = sbd_dir / "cls" / f"{sample_id}.mat"
            dst = out_dir / "SegmentationClassAug" / f"{sample_id}.png"
            gt_paths[sample_id] = dst
            if not mat.is_file():
                problems.append(f"{mat}: SBD label not found")
            elif not dst.is_file():
                sbd_tasks.append(("sbd", sample_id, str(mat), str(dst), None))
        else:
            problems.append(f"{voc_gt / sample_id}.png: ground-truth label not found")
    gt_dirs = [{"base": "voc", "path": "SegmentationClass"}]
    if sbd_dir is not None:
        gt_dirs.append({"base": "prepared", "path": "SegmentationClassAug"})
    report.sources["gt"] = SourceReport("gt", gt_dirs, for_splits=SPLITS)
    if problems:
        raise PrepareError(_summary(problems, "missing or corrupt files", root), report)

    # 4. Build labels (SBD conversion, WSSL/SDI conversion, pseudo labels), skipping finished ones.
    build_ids = list(dict.fromkeys(train_aug + train))
    tasks_by_kind: dict[str, list[Any]] = {"sbd": sbd_tasks}
    for kind, folder in (("sdi", sdi), ("wssl", wssl)):
        if folder is None:
            continue
        folder = Path(folder).expanduser()
        report.sources[kind] = SourceReport(kind, [{"base": "prepared", "path": f"labels/{kind}"}])
        tasks_by_kind[kind] = [
            (kind, i, str(folder / f"{i}.png"), str(out_dir / "labels" / kind / f"{i}.png"), None)
            for i in build_ids
            if (folder / f"{i}.png").is_file()
            and not (out_dir / "labels" / kind / f"{i}.png").is_file()
        ]
    crf_cfg = crf or CRFConfig()
    for kind in kinds:
        report.sources[kind] = SourceReport(kind, [{"base": "prepared", "path": f"pseudo/{kind}"}])
        tasks_by_kind[kind] = [
            (
                kind,
                i,
                str(root / "JPEGImages" / f"{i}.jpg"),
                str(out_dir / "pseudo" / kind / f"{i}.png"),
                (boxes[i], crf_cfg),
            )
            for i in build_ids
            if not (out_dir / "pseudo" / kind / f"{i}.png").is_file()
        ]
    n_workers = max(1, workers or default_workers())
    pending = sum(len(t) for t in tasks_by_kind.values())
    pool = (
        ProcessPoolExecutor(n_workers, mp_context=pool_context(), initializer=_init_worker)
        if n_workers > 1 and pending > 1
        else None
    )
    try:
        for kind, tasks in tasks_by_kind.items():
            stage = "converting SBD labels" if kind == "sbd" else f"making {kind} labels"
            for _, problem in _run(_build_one, tasks, pool, stage, progress):
                if problem:
                    problems.append(problem)
                elif kind != "sbd":
                    report.sources[kind].written += 1
                else:
                    report.sources["gt"].written += 1
        if problems:
            raise PrepareError(_summary(problems, "unreadable label files", root), report)

        # 5. Check every label map of every source on every split; score sources against GT.
        for kind, source in report.sources.items():
            folders = [(root if d["base"] == "voc" else out_dir) / d["path"] for d in source.dirs]
            paths = (
                gt_paths
                if kind == "gt"
                else {
                    i: folders[0] / f"{i}.png"
                    for i in all_ids
                    if (folders[0] / f"{i}.png").is_file()
                }
            )
            for split, ids in report.splits.items():
                source.missing[split] = [i for i in ids if i not in paths]
                source.counts[split] = len(ids) - len(source.missing[split])
            check_ids = [i for i in all_ids if i in paths]
            score = kind != "gt"
            train_set = set(train)
            tasks = [
                (
                    i,
                    str(paths[i]),
                    sizes[i],
                    len(classes),
                    bool(len(boxes[i])),
                    str(gt_paths[i]) if score and i in train_set else None,
                )
                for i in check_ids
            ]
            confusion = np.zeros(len(classes) ** 2, np.int64)
            scored = False
            for _, problem, counts in _run(
                _check_one, tasks, pool, f"checking {kind} labels", progress
            ):
                if problem:
                    problems.append(problem)
                elif counts is not None:
                    confusion += counts
                    scored = True
            if scored:
                source.miou["train"] = miou_from_confusion(confusion.reshape(len(classes), -1))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if problems:
        raise PrepareError(_summary(problems, "ill-formed label maps", root), report)
    _require_coverage(report)

    # 6. Split lists, then the manifest, last and atomically.
    for name, ids in report.splits.items():
        atomic_write_text(out_dir / "splits" / f"{name}.txt", "".join(f"{i}\n" for i in ids))
    report.manifest_path = atomic_write_json(
        out_dir / MANIFEST_NAME, _manifest(report, kinds, sbd_root, sdi, wssl, n_workers, skip_unknown)
    )
    return report


def _require_coverage(report: PrepareReport) -> None:
    """Every source must cover the splits it is for: GT all, the others train_aug and train."""
    problems = []
    for kind, source in report.sources.items():
        missing = source.missing_ids
        if missing:
            problems.append(
                f"{kind} lacks {len(missing)} label maps (first: {', '.join(missing[:5])})"
            )
    if problems:
        raise PrepareError(_summary(problems, "incomplete label sources", report.voc_root), report)


def _manifest(
    report: PrepareReport, kinds: list[str], sbd_root: Any, sdi: Any, wssl: Any, workers: int,
    skip_unknown: bool = False,
) -> dict[str, Any]:
    notes = {"train_aug": "; ".join(n for n in report.notes if "train_aug" in n)}
    return {
        "format": MANIFEST_FORMAT,
        "pipseg_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "voc_root": str(report.voc_root),
        "classes": report.classes,
        "settings": {
            "pseudo": kinds,
            "sbd_root": str(sbd_root) if sbd_root else None,
            "sdi": str(sdi) if sdi else None,
            "wssl": str(wssl) if wssl else None,
            "workers": workers,
            "skip_unknown": skip_unknown,
        },
        "splits": {
            name: {
                "file": f"splits/{name}.txt",
                "count": len(ids),
                **({"note": notes[name]} if notes.get(name) else {}),
            }
            for name, ids in report.splits.items()
        },
        "sources": {
            kind: {
                "dirs": s.dirs,
                "counts": s.counts,
                "for_splits": list(s.for_splits),
                "missing": {k: len(v) for k, v in s.missing.items()},
                "miou": s.miou,
            }
            for kind, s in report.sources.items()
        },
        "images": report.images,
        "skipped_objects": report.skipped_objects,
    }
