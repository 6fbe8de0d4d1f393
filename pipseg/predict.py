"""Predict label maps for image files: input discovery, batching by size, and output writing.

Outputs for an input whose output name is ``<key>`` (its path relative to the folder given, or
its stem for files given one by one): ``<out>/<key>.png`` (VOC palette PNG of class indices, the
input's size), ``<key>.overlay.png`` (with ``overlay``: the prediction over the image, a legend
of the classes present beside it unless ``legend=False``; the demo and ``eval --show-dir`` name
theirs the same way) and ``<key>.npz`` (with ``save_probs``:
float16 probabilities ``[C, H, W]`` under the key ``probs``, the input of `pipseg.crf.folder.crf_folder`).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipseg.crf import save_probs
from pipseg.data.images import IMAGE_EXTENSIONS, image_size, read_image
from pipseg.data.labels import IGNORE_INDEX, write_label
from pipseg.data.lists import read_id_list
from pipseg.errors import PipsegError
from pipseg.inference import (
    DEFAULT_PAD_SIZE,
    LargeImages,
    Prediction,
    checkpoint_crf_canvas,
    checkpoint_pad_size,
    padded_size,
    predict_image,
    predict_probs_batch,
)
from pipseg.io import atomic_write_json
from pipseg.models.weights import generic_class_names
from pipseg.visualize import overlay_picture, write_picture

OVERLAY_ALPHA = 0.5
OVERLAY_SUFFIX = ".overlay.png"  # lossless: class colours stay exact, legend text stays sharp


@dataclass(frozen=True)
class InputImage:
    """An image to predict and the output name (no extension, may hold subfolders) it maps to."""

    path: Path
    key: str


@dataclass
class PredictSummary:
    """What `predict_files` did. ``failed`` holds ``(path, message)`` of unreadable inputs."""

    total: int = 0
    written: int = 0
    skipped: int = 0  # every requested output already existed
    failed: list[tuple[str, str]] = field(default_factory=list)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def collect_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[InputImage]:
    """Expand files, folders (recursive, by extension) and ``.txt`` lists of paths into images.

    A folder's images keep their subfolders in the output name; a file given directly (or listed
    in a .txt, relative paths resolved against the list's folder) uses its stem. Names that still
    collide get the path relative to their common folder, then their extension.
    """
    found: list[tuple[Path, str]] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found += [(p, p.relative_to(path).with_suffix("").as_posix())
                      for p in sorted(path.rglob("*")) if _is_image(p) and p.is_file()]  # fmt: skip
        elif path.suffix.lower() == ".txt" and path.is_file():
            for line in read_id_list(path, allow_empty=True):
                listed = Path(line).expanduser()
                listed = listed if listed.is_absolute() else path.parent / listed
                found.append((listed, listed.stem))
        elif path.exists() or _is_image(path):
            found.append((path, path.stem))  # unreadable / missing ones are reported per file later
        else:
            raise PipsegError(f"{path}: not found; give image files, folders or a .txt list of paths")
    seen: set[Path] = set()
    unique = []
    for path, key in found:
        resolved = path.resolve()
        if resolved not in seen:
            seen.add(resolved)
            unique.append((path, key))
    return [InputImage(path, key) for path, key in zip((p for p, _ in unique), _dedupe_keys(unique), strict=True)]


def _collisions(keys: list[str]) -> list[list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        groups[key].append(i)
    return [members for members in groups.values() if len(members) > 1]


def _dedupe_keys(items: list[tuple[Path, str]]) -> list[str]:
    keys = [key for _, key in items]
    for members in _collisions(keys):
        common = os.path.commonpath([str(items[i][0].resolve().parent) for i in members])
        for i in members:
            keys[i] = items[i][0].resolve().relative_to(common).with_suffix("").as_posix()
    for members in _collisions(keys):  # same folder, same stem: x.jpg and x.png
        for i in members:
            keys[i] = f"{keys[i]}{items[i][0].suffix}"
    return keys


def output_paths(out_dir: Path, key: str) -> dict[str, Path]:
    """The files written for output name ``key``: ``label``, ``overlay`` and ``probs``."""
    return {
        "label": out_dir / f"{key}.png",
        "overlay": out_dir / f"{key}{OVERLAY_SUFFIX}",
        "probs": out_dir / f"{key}.npz",
    }


def overlay_image(
    image: np.ndarray, label: np.ndarray, classes: Sequence[str] | None = None, *, alpha: float = OVERLAY_ALPHA,
    legend: bool = True,
) -> np.ndarray:
    """RGB image with non-background classes blended in VOC colours (``alpha``) and, beside it,
    a legend of the classes present (`pipseg.visualize.overlay_picture`)."""
    names = list(classes) if classes is not None else generic_class_names(int(label[label != IGNORE_INDEX].max(initial=0)) + 1)
    return overlay_picture(image, label, names, alpha=alpha, legend=legend)


def predict_files(
    model: nn.Module,
    images: Sequence[InputImage],
    out_dir: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    pad_size: int | None = None,
    device: torch.device | str | None = None,
    batch_size: int = 4,
    tta: bool = False,
    crf: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    overlay: bool = False,
    probs: bool = False,
    overwrite: bool = False,
    amp_dtype: torch.dtype | None = None,
    progress: Callable[[int, int], None] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    large: LargeImages | None = None,
    crf_canvas: str | None = None,
    alpha: float = OVERLAY_ALPHA,
    legend: bool = True,
) -> PredictSummary:
    """Predict every image and write its outputs (see the module docstring) under ``out_dir``.

    ``pad_size`` and ``crf_canvas`` default to what ``checkpoint`` was evaluated with (its config's
    ``eval.pad_size`` and ``eval.crf_canvas``), so ``predict`` and ``eval`` agree pixel for pixel;
    513 and ``image`` without a checkpoint. Images sharing a padded size run as one batch of up
    to ``batch_size``; with ``large`` (`LargeImages`: ``max_side``, ``tile``) each image runs on
    its own. Unreadable images are recorded in ``summary.failed`` and the run goes on. An image
    whose requested outputs all exist is skipped unless ``overwrite``. Raises `PipsegError`
    (before any work) when an output path would be one of the inputs.
    """
    out_dir = Path(out_dir)
    large = large or LargeImages()
    if pad_size is None:
        pad_size = checkpoint_pad_size(checkpoint) if checkpoint is not None else DEFAULT_PAD_SIZE
    if crf_canvas is None:
        crf_canvas = checkpoint_crf_canvas(checkpoint) if checkpoint is not None else "image"
    if probs and large.max_side is not None:
        raise PipsegError("--save-probs with --max-side: the probabilities would be smaller than the image; drop one")
    settings = {"checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None, "crf": crf is not None,
                "tta": tta, "pad_size": pad_size, "crf_canvas": crf_canvas if crf is not None else None,
                "max_side": large.max_side, "tile": large.tile}  # fmt: skip
    _check_settings(out_dir, settings, overwrite)
    # Written before any output, so an interrupted run still guards its folder.
    atomic_write_json(out_dir / SETTINGS_NAME, settings)
    wanted = ["label"] + (["overlay"] if overlay else []) + (["probs"] if probs else [])
    summary = PredictSummary(total=len(images))
    todo = _outputs_to_write(images, out_dir, wanted, overwrite, summary)
    report = partial(_report, summary, progress)
    canvas = crf is not None and crf_canvas == "padded"
    recipe = {"pad_size": pad_size, "device": device, "tta": tta, "amp_dtype": amp_dtype}
    if large.active:
        one = partial(predict_image, model, canvas=canvas, need_probs=crf is not None or probs, **recipe,
                      **large.kwargs())  # fmt: skip
        predicted = _one_by_one(todo, one, summary, report)
    else:
        predict = partial(predict_probs_batch, model, crop=not canvas, **recipe)
        predicted = _batched(todo, predict, pad_size, batch_size, summary, report)
    for image, prediction, paths in predicted:
        _write_outputs(image, prediction, paths, classes, crf, alpha=alpha, legend=legend)
        summary.written += 1
        report()
    return summary


_Todo = tuple[InputImage, dict[str, Path]]  # an image and the outputs to write for it


def _report(summary: PredictSummary, progress: Callable[[int, int], None] | None) -> None:
    if progress is not None:
        progress(summary.skipped + summary.written + len(summary.failed), summary.total)


def _outputs_to_write(
    images: Sequence[InputImage], out_dir: Path, wanted: list[str], overwrite: bool, summary: PredictSummary
) -> list[_Todo]:
    """Each image with the outputs to write for it; images whose outputs all exist count as skipped."""
    inputs = {img.path.resolve() for img in images}
    todo = []
    for img in images:
        paths = {k: v for k, v in output_paths(out_dir, img.key).items() if k in wanted}
        clash = [p for p in paths.values() if p.resolve() in inputs]
        if clash:
            raise PipsegError(f"{clash[0]}: output would overwrite an input image; choose another --out folder")
        if not overwrite and all(p.exists() for p in paths.values()):
            summary.skipped += 1
        else:
            todo.append((img, paths))
    return todo


def _by_padded_size(
    todo: list[_Todo], pad_size: int, summary: PredictSummary, report: Callable[[], None]
) -> dict[tuple[int, int], list[_Todo]]:
    """Group by padded size from the file headers, so one batch never needs two decodes."""
    groups: dict[tuple[int, int], list[_Todo]] = defaultdict(list)
    for item in todo:
        try:
            w, h = image_size(item[0].path)
        except PipsegError as e:
            summary.failed.append((str(item[0].path), str(e)))
            report()
            continue
        groups[padded_size(h, w, pad_size)].append(item)
    return groups


def _batched(
    todo: list[_Todo], predict: Callable[..., list[torch.Tensor]], pad_size: int, batch_size: int,
    summary: PredictSummary, report: Callable[[], None],
) -> Iterator[tuple[np.ndarray, Prediction, dict[str, Path]]]:
    """Each readable image with its `Prediction` and output paths, images of one padded size
    batched (``predict`` with ``crop=False`` gives canvases)."""
    for group in _by_padded_size(todo, pad_size, summary, report).values():
        for start in range(0, len(group), batch_size):
            arrays, batch = _decode(group[start : start + batch_size], summary, report)
            # The header can disagree with the decoded size (rare formats): regroup to be safe.
            by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
            for i, arr in enumerate(arrays):
                by_size[padded_size(*arr.shape[:2], pad_size)].append(i)
            for members in by_size.values():
                for i, prob in zip(members, predict([arrays[i] for i in members]), strict=True):
                    h, w = arrays[i].shape[:2]
                    canvas = prob if prob.shape[-2:] != (h, w) else None
                    yield arrays[i], Prediction(prob[:, :h, :w], arrays[i], (h, w), canvas), batch[i][1]


def _one_by_one(
    todo: list[_Todo], predict: Callable[[np.ndarray], Prediction], summary: PredictSummary,
    report: Callable[[], None],
) -> Iterator[tuple[np.ndarray, Prediction, dict[str, Path]]]:
    """Each readable image with its `Prediction` and output paths, one image at a time."""
    for item in todo:
        arrays, batch = _decode([item], summary, report)
        if arrays:
            yield arrays[0], predict(arrays[0]), batch[0][1]


def _decode(
    items: list[_Todo], summary: PredictSummary, report: Callable[[], None]
) -> tuple[list[np.ndarray], list[_Todo]]:
    """The decoded images and the items they belong to; unreadable ones go to ``summary.failed``."""
    arrays, batch = [], []
    for item in items:
        try:
            arrays.append(read_image(item[0].path))
            batch.append(item)
        except PipsegError as e:
            summary.failed.append((str(item[0].path), str(e)))
            report()
    return arrays, batch


SETTINGS_NAME = ".pipseg-predict.json"


def _check_settings(out_dir: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """Refuse to mix outputs of different settings (say plain and --crf) in one folder."""
    path = out_dir / SETTINGS_NAME
    if overwrite or not path.is_file():
        return
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    changed = [k for k in settings if k in before and before[k] != settings[k]]
    if changed:
        what = ", ".join(f"{k} {before[k]} -> {settings[k]}" for k in changed)
        raise PipsegError(
            f"{out_dir}: holds predictions made with other settings ({what}); "
            "use --overwrite to redo them or choose another --out"
        )


def _write_outputs(
    image: np.ndarray,
    prediction: Prediction,
    paths: dict[str, Path],
    classes: Sequence[str] | None,
    crf: Callable[[np.ndarray, np.ndarray], np.ndarray] | None,
    *,
    alpha: float,
    legend: bool,
) -> None:
    label = prediction.refined(crf) if crf is not None else prediction.label()
    write_label(paths["label"], label)
    if "overlay" in paths:
        write_picture(paths["overlay"], overlay_image(image, label, classes, alpha=alpha, legend=legend))
    if "probs" in paths:
        assert prediction.probs is not None
        save_probs(paths["probs"], prediction.probs.float().cpu().numpy())
