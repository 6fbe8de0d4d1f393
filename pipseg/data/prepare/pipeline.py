"""`prepare_dataset`: the stages of `pipseg prepare`, top to bottom."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipseg.config import CRFConfig
from pipseg.data.annotations import AnnotationSet
from pipseg.data.prepare.inputs import DatasetInputs, SplitLists, read_split_lists, resolve_inputs
from pipseg.data.prepare.models import MODEL_KINDS, ModelSource
from pipseg.data.prepare.report import PrepareError, PrepareReport, SourceReport, summary
from pipseg.data.prepare.stages import (
    Progress,
    box_lines,
    build_tasks,
    check_image_sizes,
    check_tasks,
    choose_splits,
    locate_ground_truth,
    read_dataset,
    run_builds,
    run_checks,
    run_models,
    write_outputs,
)
from pipseg.data.pseudo import PSEUDO_KINDS
from pipseg.errors import PipsegError
from pipseg.parallel import default_workers

PathArg = str | os.PathLike[str] | None


def prepare_dataset(
    voc_root: PathArg = None, *, images: PathArg = None, annotations: PathArg = None,
    val_images: PathArg = None, val_annotations: PathArg = None, masks: PathArg = None,
    annotation_format: str | None = None, val_fraction: float | None = None, seed: int = 0,
    out: PathArg = None, pseudo: Sequence[str] = (), sbd_root: PathArg = None, sdi: PathArg = None,
    wssl: PathArg = None, workers: int | None = None, classes: Sequence[str] | None = None,
    skip_unknown: bool = False, strict_boxes: bool = False, crf: CRFConfig | None = None,
    discover: bool = False, progress: Progress | None = None,
    models: Mapping[str, ModelSource] | None = None, on_note: Callable[[str], None] | None = None,
) -> PrepareReport:  # fmt: skip
    """Check a box-annotated dataset and build splits, labels and the manifest under ``out``.

    The dataset is ``voc_root`` (a VOC layout; ``out`` defaults to ``<voc_root>/pipseg``) or
    ``images`` with ``annotations`` (a COCO file, a YOLO or VOC XML folder; ``annotation_format``
    forces one). Splits come from ``val_annotations``, the VOC lists, or a seeded
    ``val_fraction`` split. ``classes`` lists the class names (background is added first unless
    given); ``pseudo`` the pseudo label kinds to make (`PSEUDO_KINDS`); ``sbd_root``, ``sdi``,
    ``wssl`` add VOC's extra label sources (``discover`` finds them in the download layout).
    ``models`` holds the model-run sources by kind (``{"sam": pipseg.labels.sam.SamSource(...)}``),
    needed for those kinds in ``pseudo``; they run in this process after the others.
    ``progress(stage, done, total)`` is called as work proceeds, ``on_note(line)`` with lines to
    show at once (a model source's expected time). Raises `PrepareError` with the report
    attached when inputs are missing or corrupt; the manifest is then not written.
    """
    models = dict(models or {})
    kinds = _pseudo_kinds(pseudo, models)
    if val_fraction is not None and not 0 < val_fraction <= 1:
        raise PipsegError(f"--val-fraction: {val_fraction} is not in (0, 1]")
    inputs, notes = resolve_inputs(
        voc_root, images=images, annotations=annotations, val_images=val_images,
        val_annotations=val_annotations, masks=masks, annotation_format=annotation_format,
        out=out, sbd_root=sbd_root, sdi=sdi, wssl=wssl, discover=discover,
    )  # fmt: skip
    if val_fraction is not None and inputs.val_annotations is not None:
        raise PipsegError("prepare: pass --val-annotations or --val-fraction, not both")
    given_split = val_fraction is not None or inputs.val_annotations is not None
    lists = None if given_split else read_split_lists(inputs)
    ids = list(dict.fromkeys(lists.train_aug + lists.train + lists.val)) if lists else None
    ann, val_ids = read_dataset(inputs, classes, skip_unknown=skip_unknown, ids=ids, progress=progress)
    report = PrepareReport(
        where=inputs.where, out_dir=inputs.out, classes=ann.classes, format=inputs.format,
        clipped=ann.clipped, skipped=ann.skipped, unknown=ann.unknown, notes=notes,
    )  # fmt: skip
    for problems in (ann.problems, check_image_sizes(ann, progress)):
        if problems:
            raise PrepareError(summary(problems, "missing or corrupt files", report.where), report)
    box_lines(report, strict_boxes)
    gt = locate_ground_truth(inputs, ann, lists)
    if gt.problems:
        raise PrepareError(summary(gt.problems, "missing or corrupt files", report.where), report)
    report.splits, report.split_rule = choose_splits(
        ann, lists, val_ids, set(gt.paths), val_fraction, seed
    )
    _describe(report, ann, lists)
    report.sources["gt"] = SourceReport("gt", gt.dirs, for_splits=())
    score_split = "train" if any(i in gt.paths for i in report.splits["train"]) else "val"
    score_ids = {i for i in report.splits[score_split] if i in gt.paths}
    build_ids = list(dict.fromkeys(report.splits["train_aug"] + report.splits["train"] + sorted(score_ids)))
    n_workers = max(1, workers or default_workers())
    tasks = {"gt": gt.tasks, **build_tasks(report, ann, inputs, kinds, build_ids, crf or CRFConfig())}
    run_builds(report, {k: v for k, v in tasks.items() if v}, n_workers, progress)
    run_models(report, ann, inputs.out, {k: models[k] for k in kinds if k in MODEL_KINDS},
               build_ids, progress, on_note)  # fmt: skip
    bases = {"voc": inputs.voc_root or Path("/"), "prepared": inputs.out, "absolute": Path("/")}
    checks = check_tasks(report, ann, gt, bases, score_ids)
    run_checks(report, checks, score_split, n_workers, progress)
    settings = _settings(inputs, kinds, n_workers, classes, skip_unknown, strict_boxes, val_fraction, seed)
    report.manifest_path = write_outputs(report, ann, inputs, settings)
    return report


def _pseudo_kinds(pseudo: Sequence[str], models: Mapping[str, ModelSource]) -> list[str]:
    kinds = list(dict.fromkeys(pseudo))
    known = [*PSEUDO_KINDS, *MODEL_KINDS]
    unknown = [k for k in kinds if k not in known]
    if unknown:
        raise PipsegError(
            f"--pseudo: unknown kind(s) {', '.join(unknown)}; choose from {', '.join(known)}"
        )
    for kind in kinds:
        if kind in MODEL_KINDS and kind not in models:
            raise PipsegError(
                f"--pseudo {kind}: needs {MODEL_KINDS[kind]} PATH, a SAM checkpoint file "
                "(get one with `pipseg download sam-vit-b`)"
            )
    return kinds


def _describe(report: PrepareReport, ann: AnnotationSet, lists: SplitLists | None) -> None:
    """Counts and the train_aug note."""
    report.images = len(ann.records)
    report.objects = ann.objects
    report.crowd = sum(len(r.crowd) for r in ann.records.values())
    if lists is not None and lists.sbd_dir is None:
        report.notes.append("no --sbd-root: train_aug is the VOC train split")
    elif lists is None:
        report.notes.append("train_aug is the train split")
    report.notes.append(f"splits: {report.split_rule}")


def _class_order(fmt: str, classes: Sequence[str] | None) -> str:
    if classes:
        return "--classes"
    return {
        "coco": "COCO categories by ascending id",
        "yolo": "classes.txt beside the YOLO labels",
        "voc": "PASCAL VOC classes, or the XML names sorted",
    }[fmt]


def _settings(
    inputs: DatasetInputs, kinds: list[str], workers: int, classes: Sequence[str] | None,
    skip_unknown: bool, strict_boxes: bool, val_fraction: float | None, seed: int,
) -> dict[str, Any]:  # fmt: skip
    def text(path: Path | None) -> str | None:
        return str(path) if path else None

    return {
        "class_order": _class_order(inputs.format, classes),
        "pseudo": kinds, "sbd_root": text(inputs.sbd_root), "sdi": text(inputs.sdi),
        "wssl": text(inputs.wssl), "workers": workers, "skip_unknown": skip_unknown,
        "strict_boxes": strict_boxes, "val_fraction": val_fraction, "seed": seed,
    }  # fmt: skip
