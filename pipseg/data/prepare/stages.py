"""The stages of `prepare_dataset`, in order: read annotations, find ground truth, choose splits,
build labels, check sources, write outputs. Each returns what the next needs; problems are
collected and raised once per stage as a `PrepareError`."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pipseg import __version__
from pipseg.config import CRFConfig
from pipseg.data.annotations import AnnotationSet, ImageRecord, read_annotations
from pipseg.data.images import image_size
from pipseg.data.manifest import (
    ANNOTATIONS_NAME,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    encode_records,
    relative_or_absolute,
    resolve_folder,
)
from pipseg.data.prepare.inputs import DatasetInputs, SplitLists, fraction_split
from pipseg.data.prepare.models import MODEL_KINDS, LabelItem, ModelSource
from pipseg.data.prepare.report import PrepareError, PrepareReport, SourceReport, summary
from pipseg.data.prepare.work import (
    BuildTask,
    CheckTask,
    CocoMaskTask,
    ConsensusTask,
    ConvertTask,
    PseudoTask,
    SbdTask,
    build_label,
    check_label,
    init_worker,
)
from pipseg.data.pseudo import CONSENSUS_OF
from pipseg.errors import PipsegError
from pipseg.io import atomic_write_json, atomic_write_text
from pipseg.metrics import scores_from_matrix
from pipseg.parallel import run_tasks

Progress = Callable[[str, int, int], None]  # (stage description, done, total)
DEFAULT_VAL_FRACTION = 0.1
# An SDI/WSSL source whose maps hold only 0 and 255 on more than this share of the images with
# objects is a folder of binary masks (an error); fewer such maps are labels whose objects all
# became ignore, counted and reported.
BINARY_FOLDER_SHARE = 0.5


def _tick(progress: Progress | None, stage: str) -> Callable[[int, int], None] | None:
    return (lambda done, total: progress(stage, done, total)) if progress else None


# ------------------------------------------------------------------------- 1. read annotations


def read_dataset(
    inputs: DatasetInputs, names: Sequence[str] | None, *, skip_unknown: bool,
    ids: Sequence[str] | None, progress: Progress | None,
) -> tuple[AnnotationSet, list[str] | None]:  # fmt: skip
    """Read ``--annotations`` (and ``--val-annotations``, classes matched by name) into one set;
    returns it and the val ids (None without ``--val-annotations``)."""
    tick = _tick(progress, "reading annotations")
    ann = read_annotations(inputs.format, inputs.annotations, inputs.images, names,
                           skip_unknown=skip_unknown, ids=ids, progress=tick)  # fmt: skip
    if inputs.val_annotations is None or inputs.val_images is None:
        return ann, None
    val = read_annotations(inputs.format, inputs.val_annotations, inputs.val_images, ann.classes,
                           skip_unknown=skip_unknown, progress=tick)  # fmt: skip
    both = [i for i in val.records if i in ann.records]
    if both:
        ann.problems.append(
            f"{inputs.val_annotations}: {len(both)} images are also in --annotations "
            f"(first: {', '.join(both[:3])}); keep train and val apart"
        )
    ann.records.update(val.records)
    ann.problems += val.problems
    ann.clipped += val.clipped
    ann.skipped += val.skipped
    ann.unknown += val.unknown
    return ann, list(val.records)


def check_image_sizes(ann: AnnotationSet, progress: Progress | None) -> list[str]:
    """Compare each image's size with its annotation's (formats that state sizes)."""
    if ann.sizes_checked:
        return []
    problems = []
    for done, record in enumerate(ann.records.values(), 1):
        if progress and (done % 256 == 0 or done == len(ann.records)):
            progress("checking image sizes", done, len(ann.records))
        try:
            size = image_size(record.image)
        except PipsegError as e:
            problems.append(str(e))
            continue
        if size != (record.width, record.height):
            problems.append(
                f"{record.image}: image is {size[0]}x{size[1]}, its annotation says "
                f"{record.width}x{record.height}"
            )
    return problems


def box_lines(report: PrepareReport, strict: bool) -> None:
    """Report clipped and skipped boxes as warnings, or raise them with ``--strict-boxes``."""
    if strict and (report.clipped or report.skipped):
        bad = report.clipped + report.skipped
        raise PrepareError(
            summary(bad, "bad boxes", report.where, "fix them, or drop --strict-boxes to clip "
                    "boxes past the edge and skip empty ones"),
            report,
        )  # fmt: skip
    for items, what in ((report.clipped, "boxes past the image edge clipped"),
                        (report.skipped, "empty, inverted or outside boxes skipped")):  # fmt: skip
        if items:
            report.warnings.append(summary(items, what, report.where, "--strict-boxes refuses them"))


# --------------------------------------------------------------------------- 2. ground truth


@dataclass
class GroundTruth:
    """Where each image's ground-truth mask is (or will be written), and the work to write them."""

    dirs: list[dict[str, str]] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)
    tasks: list[BuildTask] = field(default_factory=list)
    written_by_us: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def _pngs(folder: Path) -> dict[str, Path]:
    return {
        e.name[:-4]: folder / e.name for e in os.scandir(folder) if e.name.lower().endswith(".png")
    }


def locate_ground_truth(
    inputs: DatasetInputs, ann: AnnotationSet, lists: SplitLists | None
) -> GroundTruth:
    """Masks from ``--masks`` (VOC: ``SegmentationClass``), SBD ``.mat`` files to convert, and
    COCO segmentations to draw; an image without any has no ground truth, which is fine."""
    gt, out = GroundTruth(), inputs.out
    if inputs.masks is not None:
        gt.dirs.append(relative_or_absolute(inputs.masks, inputs.voc_root, "voc"))
        found = _pngs(inputs.masks)
        gt.paths = {i: found[i] for i in ann.records if i in found}
    if lists is not None and lists.sbd_dir is not None:
        gt.dirs.append({"base": "prepared", "path": "SegmentationClassAug"})
        for i in (i for i in ann.records if i in lists.sbd_ids and i not in gt.paths):
            mat, dst = lists.sbd_dir / "cls" / f"{i}.mat", out / "SegmentationClassAug" / f"{i}.png"
            gt.paths[i] = dst
            if not mat.is_file():
                gt.problems.append(f"{mat}: SBD label not found")
            elif not dst.is_file():
                gt.tasks.append(SbdTask(i, mat, dst))
    segmented = [r for r in ann.records.values() if r.segments is not None]
    if inputs.masks is None and segmented:
        gt.dirs.append({"base": "prepared", "path": "masks"})
        for r in segmented:
            dst = out / "masks" / f"{r.id}.png"
            gt.paths[r.id] = dst
            gt.written_by_us.add(r.id)
            if not dst.is_file():
                gt.tasks.append(CocoMaskTask(r.id, dst, r.width, r.height, r.segments or ()))
    return gt


# ----------------------------------------------------------------------------- 3. splits


def choose_splits(
    ann: AnnotationSet, lists: SplitLists | None, val_ids: list[str] | None,
    masked: set[str], val_fraction: float | None, seed: int,
) -> tuple[dict[str, list[str]], str]:  # fmt: skip
    """``({train, val, train_aug}, how they were chosen)``: from ``--val-annotations``, else the
    dataset's split lists, else a seeded ``--val-fraction`` of the images with masks (of all
    images when none has one)."""
    if val_ids is not None:
        val = set(val_ids)
        train = [i for i in ann.records if i not in val]
        return {"train": train, "val": val_ids, "train_aug": train}, "--val-annotations"
    if lists is not None and val_fraction is None:
        rule = "ImageSets/Segmentation lists" + (" and SBD" if lists.sbd_dir else "")
        return {"train": lists.train, "val": lists.val, "train_aug": lists.train_aug}, rule
    fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
    everything = list(ann.records)
    pool = [i for i in everything if i in masked] or everything
    train, val = fraction_split(pool, everything, fraction, seed)
    whose = f"the {len(pool)} images with masks" if masked else f"all {len(pool)} images (no masks)"
    if not train:
        raise PipsegError(
            f"--val-fraction {fraction}: puts all {len(everything)} images in val; lower it"
        )
    return {"train": train, "val": val, "train_aug": train}, (
        f"--val-fraction {fraction} (seed {seed}) of {whose}"
    )


# ------------------------------------------------------------------------- 4. build labels


def build_tasks(
    report: PrepareReport, ann: AnnotationSet, inputs: DatasetInputs, kinds: Sequence[str],
    build_ids: Sequence[str], crf: CRFConfig,
) -> dict[str, list[BuildTask]]:  # fmt: skip
    """Label files still to make per source (existing files are kept: a rerun resumes)."""
    tasks: dict[str, list[BuildTask]] = {}
    for kind, folder in (("sdi", inputs.sdi), ("wssl", inputs.wssl)):
        if folder is not None:
            report.sources[kind] = SourceReport(kind, [{"base": "prepared", "path": f"labels/{kind}"}])
            dst = inputs.out / "labels" / kind
            tasks[kind] = [
                ConvertTask(i, folder / f"{i}.png", dst / f"{i}.png") for i in build_ids
                if (folder / f"{i}.png").is_file() and not (dst / f"{i}.png").is_file()
            ]  # fmt: skip
    for kind in kinds:
        report.sources[kind] = SourceReport(kind, [{"base": "prepared", "path": f"pseudo/{kind}"}])
        if kind in MODEL_KINDS:
            continue  # run by `run_models` in this process
        dst = inputs.out / "pseudo" / kind
        todo = [ann.records[i] for i in build_ids if not (dst / f"{i}.png").is_file()]
        tasks[kind] = [_pseudo_task(kind, r, dst / f"{r.id}.png", inputs.out, crf) for r in todo]
    return tasks


def _pseudo_task(kind: str, r: ImageRecord, dst: Path, out: Path, crf: CRFConfig) -> BuildTask:
    if kind != "consensus":
        return PseudoTask(kind, r.id, r.image, dst, r.boxes, r.crowd, crf)
    first, second = (out / "pseudo" / k / f"{r.id}.png" for k in CONSENSUS_OF)
    return ConsensusTask(r.id, r.image, dst, r.boxes, r.crowd, crf, (first, second))


def run_models(
    report: PrepareReport, ann: AnnotationSet, out: Path, models: dict[str, ModelSource],
    build_ids: Sequence[str], progress: Progress | None, on_note: Callable[[str], None] | None,
) -> None:  # fmt: skip
    """Run each model label source over ``build_ids`` in this process (one model per device),
    after the pool's sources: a degenerate box falls back to the ``crf`` label just written."""
    for kind, source in models.items():
        items = [
            LabelItem(i, ann.records[i].image, ann.records[i].boxes, ann.records[i].crowd,
                      out / "pseudo" / "crf" / f"{i}.png")
            for i in build_ids
        ]  # fmt: skip
        run = source(
            items, out / "pseudo" / kind, progress=_tick(progress, f"making {kind} labels"),
            on_note=on_note,
        )  # fmt: skip
        report.sources[kind].written += run.written
        report.sources[kind].stats = run.stats
        report.notes.extend(run.notes)


def run_builds(
    report: PrepareReport, tasks: dict[str, list[BuildTask]], workers: int,
    progress: Progress | None,
) -> None:  # fmt: skip
    """Make every label file (``gt`` tasks count as the ground truth's); raise on problems.

    Consensus labels are made after the others, so they read the ``grabcut`` and ``crf`` labels
    this run wrote instead of making them again."""
    later = {k: v for k, v in tasks.items() if k == "consensus"}
    first = {k: v for k, v in tasks.items() if k not in later}
    for phase in (first, later):
        if phase:
            _run_build_phase(report, phase, workers, progress)


def _run_build_phase(
    report: PrepareReport, tasks: dict[str, list[BuildTask]], workers: int,
    progress: Progress | None,
) -> None:  # fmt: skip
    flat = [(kind, task) for kind, items in tasks.items() for task in items]
    stage = {k: "converting SBD/COCO masks" if k == "gt" else f"making {k} labels" for k in tasks}
    done = dict.fromkeys(tasks, 0)
    problems = []
    results = run_tasks(build_label, [t for _, t in flat], workers=workers,
                        initializer=init_worker, on_warning=report.warnings.append)  # fmt: skip
    for index, problem in results:
        kind = flat[index][0]
        done[kind] += 1
        if progress:
            progress(stage[kind], done[kind], len(tasks[kind]))
        if problem:
            problems.append(problem)
        else:
            report.sources[kind].written += 1
    if problems:
        raise PrepareError(summary(problems, "unreadable label files", report.where), report)


# ------------------------------------------------------------------------ 5. check sources


def check_tasks(
    report: PrepareReport, ann: AnnotationSet, gt: GroundTruth, bases: dict[str, Path],
    score_ids: set[str],
) -> dict[str, list[CheckTask]]:  # fmt: skip
    """One check per label map of every source; pseudo/external maps of ``score_ids`` are scored
    against the ground truth. Fills each source's counts and missing ids per split."""
    tasks: dict[str, list[CheckTask]] = {}
    c = len(ann.classes)
    for kind, source in report.sources.items():
        if kind == "gt":
            paths = gt.paths
        else:
            folder = resolve_folder(source.dirs[0], bases)
            found = _pngs(folder) if folder.is_dir() else {}
            paths = {i: found[i] for i in ann.records if i in found}
        for split, ids in report.splits.items():
            source.missing[split] = [i for i in ids if i not in paths]
            source.counts[split] = len(ids) - len(source.missing[split])
        tasks[kind] = [
            CheckTask(
                i, p, ann.records[i].width, ann.records[i].height, c,
                background_only=_background_check(kind, len(ann.records[i].boxes) > 0, i in gt.written_by_us),
                gt=gt.paths.get(i) if kind != "gt" and i in score_ids else None,
            )
            for i, p in paths.items()
        ]  # fmt: skip
    return tasks


def _background_check(kind: str, has_objects: bool, ours: bool) -> str | None:
    """How a map of only 0 and 255 on an image with objects counts (`CheckTask`)."""
    if not has_objects or ours:
        return None
    return "error" if kind == "gt" else "count" if kind in ("sdi", "wssl") else None


def run_checks(
    report: PrepareReport, tasks: dict[str, list[CheckTask]], score_split: str, workers: int,
    progress: Progress | None,
) -> None:  # fmt: skip
    """Check every label map, score sources against ground truth on the pixels each labels,
    measure their coverage, count SDI/WSSL maps of only background and ignore; raise on problems."""
    flat = [(kind, task) for kind, items in tasks.items() for task in items]
    c = len(report.classes)
    matrices = {kind: np.zeros((c, c), np.int64) for kind in tasks}
    pixels = {kind: np.zeros(2, np.int64) for kind in tasks}  # labelled, all
    scored: set[str] = set()
    done = dict.fromkeys(tasks, 0)
    problems = []
    results = run_tasks(check_label, [t for _, t in flat], workers=workers,
                        initializer=init_worker, on_warning=report.warnings.append)  # fmt: skip
    for index, result in results:
        kind, task = flat[index]
        done[kind] += 1
        if progress:
            progress(f"checking {kind} labels", done[kind], len(tasks[kind]))
        if result.problem:
            problems.append(result.problem)
            continue
        pixels[kind] += (result.labelled, result.pixels)
        if result.background_only:
            report.sources[kind].background_only.append(str(task.path))
        if result.counts is not None:
            matrices[kind] += result.counts
            scored.add(kind)
    problems += _background_only(report, tasks)
    if problems:
        raise PrepareError(summary(problems, "ill-formed label maps", report.where), report)
    for kind in scored:
        report.sources[kind].miou[score_split] = float(scores_from_matrix(matrices[kind])["miou"])
    for kind, (labelled, total) in pixels.items():
        report.sources[kind].coverage = float(labelled / total) if total else None
    missing = [
        f"{kind} lacks {len(s.missing_ids)} label maps (first: {', '.join(s.missing_ids[:5])})"
        for kind, s in report.sources.items()
        if s.missing_ids
    ]
    if missing:
        raise PrepareError(summary(missing, "incomplete label sources", report.where), report)


def _background_only(report: PrepareReport, tasks: dict[str, list[CheckTask]]) -> list[str]:
    """SDI/WSSL maps of only background and ignore on images with objects: a warning line with
    their count and the first few files, or a problem when they are most of the source (a folder
    of binary masks, not class ids)."""
    problems = []
    for kind, source in report.sources.items():
        found = sorted(source.background_only)
        if not found:
            continue
        checked = sum(t.background_only == "count" for t in tasks[kind])
        if len(found) > BINARY_FOLDER_SHARE * checked:
            problems.append(
                f"--{kind}: {len(found)} of {checked} label maps hold only 0 and 255 "
                f"(first: {Path(found[0]).name}): binary masks, not class ids"
            )
        else:
            report.warnings.append(summary(
                found, f"{kind} label maps hold only background and ignore on images with boxes "
                "(their objects train as ignore)", report.where, "counted, not an error",
            ))  # fmt: skip
    return problems


# -------------------------------------------------------------------------- 6. write outputs


def write_outputs(
    report: PrepareReport, ann: AnnotationSet, inputs: DatasetInputs, settings: dict[str, Any],
) -> Path:  # fmt: skip
    """Split lists and ``annotations.json``, then the manifest, last and atomically."""
    out = inputs.out
    for name, ids in report.splits.items():
        atomic_write_text(out / "splits" / f"{name}.txt", "".join(f"{i}\n" for i in ids))
    roots = [inputs.images] + ([inputs.val_images] if inputs.val_images else [])
    dirs = [
        (relative_or_absolute(p, inputs.voc_root, "voc"), p)
        for p in dict.fromkeys(roots)
    ]
    atomic_write_json(out / ANNOTATIONS_NAME, encode_records(ann.records.values(), dirs))
    return atomic_write_json(out / MANIFEST_NAME, manifest(report, inputs, [d for d, _ in dirs], settings))


def manifest(
    report: PrepareReport, inputs: DatasetInputs, image_dirs: list[dict[str, str]],
    settings: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """The manifest document (layout in `pipseg.data.manifest`)."""
    notes = {"train_aug": "; ".join(n for n in report.notes if "train_aug" in n)}
    paths = {k: getattr(inputs, k) for k in ("images", "annotations", "val_images", "val_annotations", "masks")}
    return {
        "format": MANIFEST_FORMAT,
        "pipseg_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source_format": inputs.format,
        "voc_root": str(inputs.voc_root) if inputs.voc_root else None,
        "inputs": {k: str(v) if v else None for k, v in paths.items()},
        "classes": report.classes,
        "class_order": settings.pop("class_order"),
        "images": {"file": ANNOTATIONS_NAME, "count": report.images, "dirs": image_dirs},
        "objects": {"boxes": report.objects, "crowd": report.crowd, "unknown_skipped": report.unknown,
                    "clipped": len(report.clipped), "skipped": len(report.skipped)},  # fmt: skip
        "settings": settings,
        "splits": {
            name: {"file": f"splits/{name}.txt", "count": len(ids),
                   **({"note": notes[name]} if notes.get(name) else {})}  # fmt: skip
            for name, ids in report.splits.items()
        },
        "split_rule": report.split_rule,
        "sources": {
            kind: {"dirs": s.dirs, "counts": s.counts, "for_splits": list(s.for_splits),
                   "missing": {k: len(v) for k, v in s.missing.items()}, "miou": s.miou,
                   "coverage": s.coverage, "background_only": len(s.background_only),
                   **({"stats": s.stats} if s.stats else {})}  # fmt: skip
            for kind, s in report.sources.items()
        },
    }

