"""Predict label maps for image files: input discovery, batching by size, and output writing.

Outputs for an input whose output name is ``<key>`` (its path relative to the folder given, or
its stem for files given one by one): ``<out>/<key>.png`` (VOC palette PNG of class indices, the
input's size), ``<key>.overlay.jpg`` (with ``overlay``) and ``<key>.npz`` (with ``save_probs``:
float16 probabilities ``[C, H, W]`` under the key ``probs``, the input of `pipseg.crf.folder.crf_folder`).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from pipseg.crf import save_probs
from pipseg.data.images import IMAGE_EXTENSIONS, image_size, read_image
from pipseg.data.labels import IGNORE_INDEX, VOC_PALETTE, write_label
from pipseg.data.lists import read_id_list
from pipseg.errors import PipsegError
from pipseg.inference import DEFAULT_PAD_SIZE, checkpoint_pad_size, padded_size, predict_probs_batch
from pipseg.io import atomic_write_bytes, atomic_write_json

OVERLAY_ALPHA = 0.5


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
        "overlay": out_dir / f"{key}.overlay.jpg",
        "probs": out_dir / f"{key}.npz",
    }


def overlay_image(image: np.ndarray, label: np.ndarray, classes: Sequence[str] | None = None) -> np.ndarray:
    """RGB image with non-background classes blended in VOC colours and a legend of those present."""
    colours = VOC_PALETTE[label]
    mask = ((label != 0) & (label != IGNORE_INDEX))[..., None]
    blended = np.where(mask, (1 - OVERLAY_ALPHA) * image + OVERLAY_ALPHA * colours, image)
    out = np.ascontiguousarray(blended.round().astype(np.uint8))
    present = [int(c) for c in np.unique(label) if c != IGNORE_INDEX]
    if not present:
        return out
    height, width = label.shape
    scale = max(0.35, min(height, width) / 700)
    thickness = max(1, round(scale * 1.5))
    font = cv2.FONT_HERSHEY_SIMPLEX
    line_h = int(24 * scale) + 6
    names = [classes[c] if classes is not None and c < len(classes) else f"class {c}" for c in present]
    text_w = max(cv2.getTextSize(n, font, scale, thickness)[0][0] for n in names)
    box_w, box_h = min(width, text_w + line_h + 12), min(height, line_h * len(names) + 8)
    out[:box_h, :box_w] = (out[:box_h, :box_w] * 0.4).astype(np.uint8)  # dark backing for the text
    for row, (cls, name) in enumerate(zip(present, names, strict=True)):
        y = 4 + row * line_h
        swatch = tuple(int(v) for v in VOC_PALETTE[cls])
        cv2.rectangle(out, (4, y + 2), (4 + line_h - 6, y + line_h - 4), swatch, thickness=-1)
        cv2.putText(out, name, (line_h + 2, y + line_h - 8), font, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return out


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise PipsegError(f"{path}: could not encode the overlay")
    atomic_write_bytes(path, buf.tobytes())


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
) -> PredictSummary:
    """Predict every image and write its outputs (see the module docstring) under ``out_dir``.

    ``pad_size`` defaults to the one ``checkpoint`` was evaluated with (its config's
    ``eval.pad_size``, see `checkpoint_pad_size`), so ``predict`` and ``eval`` agree pixel for
    pixel; 513 without a checkpoint. Images sharing a padded size run as one batch of up to
    ``batch_size``. Unreadable images are recorded in ``summary.failed`` and the run goes on. An
    image whose requested outputs all exist is skipped unless ``overwrite``. Raises `PipsegError`
    (before any work) when an output path would be one of the inputs.
    """
    out_dir = Path(out_dir)
    if pad_size is None:
        pad_size = checkpoint_pad_size(checkpoint) if checkpoint is not None else DEFAULT_PAD_SIZE
    settings = {"checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
                "crf": crf is not None, "tta": tta, "pad_size": pad_size}  # fmt: skip
    _check_settings(out_dir, settings, overwrite)
    # Written before any output, so an interrupted run still guards its folder.
    atomic_write_json(out_dir / SETTINGS_NAME, settings)
    wanted = ["label"] + (["overlay"] if overlay else []) + (["probs"] if probs else [])
    summary = PredictSummary(total=len(images))
    todo = _outputs_to_write(images, out_dir, wanted, overwrite, summary)
    report = partial(_report, summary, progress)
    predict = partial(predict_probs_batch, model, pad_size=pad_size, device=device, tta=tta, amp_dtype=amp_dtype)
    for group in _by_padded_size(todo, pad_size, summary, report).values():
        for start in range(0, len(group), batch_size):
            arrays, batch = _decode(group[start : start + batch_size], summary, report)
            # The header can disagree with the decoded size (rare formats): regroup to be safe.
            by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
            for i, arr in enumerate(arrays):
                by_size[padded_size(*arr.shape[:2], pad_size)].append(i)
            for members in by_size.values():
                results = predict([arrays[i] for i in members])
                for i, prob in zip(members, results, strict=True):
                    _write_outputs(arrays[i], prob, batch[i][1], classes, crf)
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
    prob: torch.Tensor,
    paths: dict[str, Path],
    classes: Sequence[str] | None,
    crf: Callable[[np.ndarray, np.ndarray], np.ndarray] | None,
) -> None:
    need_probs = crf is not None or "probs" in paths
    prob_np = prob.float().cpu().numpy() if need_probs else None
    if crf is not None:
        label = np.asarray(crf(image, prob_np), dtype=np.uint8)
    else:
        label = prob.argmax(0).to(torch.uint8).cpu().numpy()
    write_label(paths["label"], label)
    if "overlay" in paths:
        _write_jpeg(paths["overlay"], overlay_image(image, label, classes))
    if "probs" in paths:
        save_probs(paths["probs"], prob_np)
