"""Segment Anything (SAM) as a label source: a box-prompted mask per box, painted into a class map.

- `load_sam` reads the user's checkpoint with ``torch.load(weights_only=True)`` into Meta's own
  model classes (the `segment_anything` builders with ``checkpoint=None``: their own loading calls
  ``torch.load`` without ``weights_only``); the type (``vit_b``/``vit_l``/``vit_h``) is read from
  the patch embedding's width.
- `SamLabeller` labels one image: one image embedding, all its boxes prompted in one batch, per
  box the multi-mask output with the highest predicted IoU, clipped to the box. A mask keeping
  less than ``min_fill`` or more than ``max_fill`` of its box is degenerate and the box takes a
  fallback label (the CRF label in `prepare`) instead; boxes are painted largest first (smaller
  boxes on top: `pipseg.data.pseudo.paint_order`, as every source); crowd regions are 255.
- `make_sam_labels` runs a labeller over a dataset, one model in the calling process, writing each
  label atomically and skipping finished ones, so a rerun resumes.
- `SamSource` is that runner as the `sam` label source of `prepare`
  (`pipseg.data.prepare.models.ModelSource`).

Boxes are 0-based inclusive ``int [N, 5] (x0, y0, x1, y1, cls)`` as everywhere in pipseg.
"""

from __future__ import annotations

import pickle
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from segment_anything import SamPredictor
from segment_anything.build_sam import build_sam_vit_b, build_sam_vit_h, build_sam_vit_l
from segment_anything.modeling import Sam

from pipseg.config import CRFConfig
from pipseg.data.images import read_image
from pipseg.data.labels import IGNORE_INDEX, read_label, write_label
from pipseg.data.prepare.models import LabelItem, ModelRun
from pipseg.data.pseudo import crf_label, mark_crowd, paint_order
from pipseg.device import resolve_device
from pipseg.errors import PipsegError

__all__ = [
    "MAX_FILL",
    "MIN_FILL",
    "SAM_BUILDERS",
    "SamItem",
    "SamLabeller",
    "SamReport",
    "SamSource",
    "SamStats",
    "load_sam",
    "make_sam_labels",
    "read_sam_state",
    "sam_model_type",
]

SAM_BUILDERS: dict[str, Callable[[], Sam]] = {
    "vit_b": build_sam_vit_b,
    "vit_l": build_sam_vit_l,
    "vit_h": build_sam_vit_h,
}
SAM_WIDTHS: dict[int, str] = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}  # patch-embedding width
PATCH_KEY = "image_encoder.patch_embed.proj.weight"
# A mask keeping less than MIN_FILL of its box is "nearly empty": the same bar the GrabCut and CRF
# sources use (`pipseg.data.pseudo.MIN_KEEP`). One keeping more than MAX_FILL differs from the
# filled box by under 2% of it: it carries no shape the box does not.
MIN_FILL = 0.15
MAX_FILL = 0.98
FILL_BINS = 20  # histogram of mask fill per box, for tuning the two bars on real data
NOTE_AFTER = 1  # images measured before the time per image is estimated and shown
CHECKPOINT_HINT = "pass --sam-checkpoint an official SAM checkpoint (pipseg download sam-vit-b)"

# ----------------------------------------------------------------------------------------------
# Loading


def read_sam_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a SAM checkpoint file, read with ``weights_only=True``.

    Accepts a plain state dict or one nested under ``model`` / ``state_dict``. Raises
    `PipsegError` for a missing file, a file that is not a PyTorch checkpoint, or a pickle that
    needs code to load.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise PipsegError(f"{path}: SAM checkpoint not found; {CHECKPOINT_HINT}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise PipsegError(
                f"{path}: not a PyTorch checkpoint ({_first_line(e)}); {CHECKPOINT_HINT}"
            ) from None
        raise PipsegError(
            f"{path}: a pickle that needs code to load{_unsafe_globals(path)}, which pipseg "
            "refuses (weights_only); use an official SAM checkpoint, or re-save it as tensors "
            "with torch.save(model.state_dict(), PATH)"
        ) from None
    except Exception as e:
        # Any other failure to unpickle (KeyError, EOFError, ...) means it is not a checkpoint.
        raise PipsegError(
            f"{path}: not a PyTorch checkpoint ({_first_line(e)}); {CHECKPOINT_HINT}"
        ) from None
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict) and PATCH_KEY not in obj:
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PipsegError(
            f"{path}: not a SAM checkpoint (holds a {type(obj).__name__}, not a dict of tensors); "
            + CHECKPOINT_HINT
        )
    return obj


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:120]}" if text else type(e).__name__


def _unsafe_globals(path: Path) -> str:
    """`` (a.B, c.D)``: the classes a zip checkpoint needs, or ``""`` where torch cannot say."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # legacy (non-zip) files: the names are only a courtesy
        return ""
    return f" ({', '.join(names[:2])}{', ...' if len(names) > 2 else ''})" if names else ""


def sam_model_type(state: Mapping[str, torch.Tensor], path: str | Path = "<state>") -> str:
    """``vit_b``, ``vit_l`` or ``vit_h``, from the width of the patch embedding in ``state``."""
    weight = state.get(PATCH_KEY)
    if weight is None:
        if any(k.startswith("image_encoder.trunk.") for k in state):
            raise PipsegError(
                f"{path}: a SAM 2 checkpoint; pipseg reads SAM (vit_b, vit_l, vit_h) checkpoints, "
                f"as Meta's SAM 2 package is not on PyPI; {CHECKPOINT_HINT}"
            )
        some = ", ".join(list(state)[:3]) or "none"
        raise PipsegError(
            f"{path}: not a SAM checkpoint (no key {PATCH_KEY}; keys: {some}); {CHECKPOINT_HINT}"
        )
    width = int(weight.shape[0]) if weight.ndim == 4 else -1
    if width not in SAM_WIDTHS:
        known = ", ".join(f"{t} ({w})" for w, t in SAM_WIDTHS.items())
        raise PipsegError(
            f"{path}: {PATCH_KEY} has shape {tuple(weight.shape)}, a width of no known SAM type "
            f"({known}); {CHECKPOINT_HINT}"
        )
    return SAM_WIDTHS[width]


def _check_layout(
    model: Sam, state: Mapping[str, torch.Tensor], path: Path, kind: str, forced: bool
) -> None:
    """Raise `PipsegError` naming the keys or shapes by which ``state`` misses ``model``."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{what} {len(items)}: {items[0]}{', ...' if len(items) > 1 else ''}"
        for what, items in (
            ("missing keys", missing),
            ("unexpected keys", extra),
            ("wrong shapes", shapes),
        )
        if items
    ]
    if problems:
        hint = "leave out --sam-model to read the type from the file" if forced else CHECKPOINT_HINT
        raise PipsegError(f"{path}: not a SAM {kind} checkpoint ({'; '.join(problems)}); {hint}")


def load_sam(
    checkpoint: str | Path,
    model_type: str | None = None,
    device: str = "auto",
    *,
    builders: Mapping[str, Callable[[], Sam]] = SAM_BUILDERS,
) -> Sam:
    """A SAM model in eval mode on ``device``, its weights from ``checkpoint``.

    ``model_type`` (a key of ``builders``: ``vit_b``, ``vit_l``, ``vit_h``) forces the
    architecture; by default it is read from the checkpoint's tensor shapes. The model is built by
    the package's own builder without weights, then loaded strictly. ``builders`` maps types to
    those builders (tests pass a tiny one). Raises `PipsegError` (one line) for a missing file, a
    file that is not a SAM checkpoint (the wrong keys or shapes named), or a pickle that needs
    code to load.
    """
    path = Path(checkpoint).expanduser()
    state = read_sam_state(path)
    kind = model_type or sam_model_type(state, path)
    if kind not in builders:
        raise PipsegError(
            f"--sam-model {kind}: not a SAM model type; use one of {', '.join(builders)}"
        )
    model = builders[kind]()
    _check_layout(model, state, path, kind, forced=model_type is not None)
    model.load_state_dict(state, strict=True)
    return model.to(resolve_device(device)).eval()


# ----------------------------------------------------------------------------------------------
# Labelling one image


@dataclass
class SamStats:
    """Per-box counts of one image or a whole run."""

    boxes: int = 0
    empty: int = 0  # masks keeping under min_fill of their box: fallback label used
    full: int = 0  # masks keeping over max_fill of their box: fallback label used
    fill_hist: np.ndarray = field(default_factory=lambda: np.zeros(FILL_BINS, np.int64))

    @property
    def fallbacks(self) -> int:
        """Boxes that took the fallback label."""
        return self.empty + self.full

    def add(self, other: SamStats) -> None:
        """Accumulate ``other`` into these counts."""
        self.boxes += other.boxes
        self.empty += other.empty
        self.full += other.full
        self.fill_hist += other.fill_hist


class SamLabeller:
    """Box-prompted SAM pseudo labels for one image at a time (see the module docstring).

    ``min_fill`` / ``max_fill`` bound the share of its box a mask may keep before the box takes
    the fallback label. ``box_batch`` caps the boxes decoded at once (only memory: an image with
    more boxes is decoded in several batches against the same embedding). On CUDA the model runs
    under bfloat16 autocast (float16 where bfloat16 is unsupported); the masks come to the host
    once per image, never per box.
    """

    def __init__(
        self,
        model: Sam,
        *,
        min_fill: float = MIN_FILL,
        max_fill: float = MAX_FILL,
        box_batch: int = 64,
    ) -> None:
        self.predictor = SamPredictor(model)
        self.device = torch.device(model.device)
        self.min_fill, self.max_fill, self.box_batch = min_fill, max_fill, box_batch

    def _autocast(self) -> Any:
        if self.device.type != "cuda":
            return nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    def masks(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per box, its chosen mask clipped to the box, ``bool [N, H, W]``, and the share of the
        box it keeps, ``float [N]``."""
        h, w = image.shape[:2]
        with torch.inference_mode(), self._autocast():
            self.predictor.set_image(image)
            coords = torch.as_tensor(boxes[:, :4], dtype=torch.float32, device=self.device)
            # Inclusive pixel boxes -> SAM's continuous XYXY corners (COCO-style x + w).
            prompts = self.predictor.transform.apply_boxes_torch(
                coords + coords.new_tensor([0, 0, 1, 1]), (h, w)
            )
            chosen = []
            for start in range(0, len(boxes), self.box_batch):
                masks, iou, _ = self.predictor.predict_torch(
                    None, None, prompts[start : start + self.box_batch], multimask_output=True
                )
                best = iou.argmax(dim=1)
                chosen.append(masks[torch.arange(len(best), device=self.device), best])
            self.predictor.reset_image()
            ys = torch.arange(h, device=self.device)[None, :, None]
            xs = torch.arange(w, device=self.device)[None, None, :]
            x0, y0, x1, y1 = (coords[:, i, None, None] for i in range(4))
            in_box = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
            inside = torch.cat(chosen) & in_box
            fill = inside.flatten(1).sum(1) / in_box.flatten(1).sum(1)
        return inside.cpu().numpy(), fill.float().cpu().numpy()

    def __call__(
        self,
        image: np.ndarray,
        boxes: np.ndarray,
        *,
        crowd: np.ndarray | None = None,
        fallback: Callable[[], np.ndarray] | None = None,
    ) -> tuple[np.ndarray, SamStats]:
        """The class map ``uint8 [H, W]`` of ``image`` (uint8 RGB) and its `SamStats`.

        ``crowd`` (bool ``[H, W]``) becomes 255. ``fallback()`` returns a class map of the image,
        asked for at most once and only when a mask is degenerate; inside such a box, the pixels
        where it holds the box's class take that class (without a fallback the box is filled).
        """
        h, w = image.shape[:2]
        label = np.zeros((h, w), np.uint8)
        boxes = np.asarray(boxes, np.int64).reshape(-1, 5)
        boxes = boxes[paint_order(boxes)]
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w - 1)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h - 1)
        stats = SamStats(boxes=len(boxes))
        if len(boxes):
            inside, fill = self.masks(image, boxes)
            stats.fill_hist += np.bincount(
                np.minimum((fill * FILL_BINS).astype(np.int64), FILL_BINS - 1), minlength=FILL_BINS
            )
            self._paint(label, boxes, inside, fill, fallback, stats)
        if crowd is not None:
            label[crowd] = IGNORE_INDEX
        return label, stats

    def _paint(
        self,
        label: np.ndarray,
        boxes: np.ndarray,
        inside: np.ndarray,
        fill: np.ndarray,
        fallback: Callable[[], np.ndarray] | None,
        stats: SamStats,
    ) -> None:
        fallback_label = None
        for k, (x0, y0, x1, y1, cls) in enumerate(boxes.tolist()):
            region = label[y0 : y1 + 1, x0 : x1 + 1]
            if self.min_fill <= fill[k] <= self.max_fill:
                region[inside[k, y0 : y1 + 1, x0 : x1 + 1]] = cls
                continue
            stats.empty += int(fill[k] < self.min_fill)
            stats.full += int(fill[k] > self.max_fill)
            if fallback is None:
                region[:] = cls
                continue
            if fallback_label is None:
                fallback_label = fallback()
            region[fallback_label[y0 : y1 + 1, x0 : x1 + 1] == cls] = cls


# ----------------------------------------------------------------------------------------------
# A whole dataset


SamItem = LabelItem  # one image to label: id, image file, boxes, crowd boxes, fallback file


@dataclass
class SamReport:
    """What `make_sam_labels` did: images written and skipped, box counts, time per image."""

    total: int
    skipped: int = 0
    written: int = 0
    stats: SamStats = field(default_factory=SamStats)
    image_seconds: list[float] = field(default_factory=list)

    @property
    def seconds_per_image(self) -> float | None:
        """Median seconds per image, the first (warm-up) one left out when there are others."""
        times = self.image_seconds[1:] or self.image_seconds
        return statistics.median(times) if times else None


def _hms(seconds: float) -> str:
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"


def make_sam_labels(
    items: Sequence[SamItem],
    out_dir: str | Path,
    labeller: SamLabeller,
    *,
    fallback: Callable[[np.ndarray, np.ndarray], np.ndarray],
    crowd: Callable[[SamItem], np.ndarray | None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> SamReport:
    """Write ``<out_dir>/<sample_id>.png`` for each item that has none yet, with ``labeller``.

    ``fallback(image, boxes)`` gives the class map used inside degenerate boxes (e.g.
    ``functools.partial(crf_label, crf=cfg)``), computed only for images that need it and only
    when the item's ``fallback_label`` file does not exist (else that file is read);
    ``crowd(item)`` gives a mask (bool ``[H, W]``) to set to 255, and the background inside the
    item's crowd boxes becomes 255 as in every source. ``progress(done, total)`` counts the
    images this run labels (finished ones are skipped); ``on_note`` gets one line with the
    measured time per image and the expected time for the rest once `NOTE_AFTER` images are done
    and more remain. Raises `PipsegError` for an unreadable image or an unwritable label.
    """
    out_dir = Path(out_dir)
    todo = [item for item in items if not (out_dir / f"{item.sample_id}.png").is_file()]
    report = SamReport(total=len(items), skipped=len(items) - len(todo))
    if progress:
        progress(0, len(todo))
    for done, item in enumerate(todo, 1):
        start = time.perf_counter()
        _label_one(item, out_dir, labeller, fallback, crowd, report)
        report.image_seconds.append(time.perf_counter() - start)
        if on_note and done == NOTE_AFTER and len(todo) > done:
            per_image = statistics.median(report.image_seconds)
            on_note(
                f"sam: about {per_image:.1f} s per image on {labeller.device.type}; "
                f"{len(todo) - done} images to go, about {_hms(per_image * (len(todo) - done))}"
            )
        if progress:
            progress(done, len(todo))
    return report


def _label_one(
    item: SamItem, out_dir: Path, labeller: SamLabeller,
    fallback: Callable[[np.ndarray, np.ndarray], np.ndarray],
    crowd: Callable[[SamItem], np.ndarray | None] | None, report: SamReport,
) -> None:  # fmt: skip
    image = read_image(item.image)

    def fallback_label() -> np.ndarray:
        if item.fallback_label is not None and item.fallback_label.is_file():
            return read_label(item.fallback_label)
        return fallback(image, item.boxes)

    label, stats = labeller(
        image, item.boxes, crowd=crowd(item) if crowd else None, fallback=fallback_label
    )
    path = out_dir / f"{item.sample_id}.png"
    try:
        write_label(path, mark_crowd(label, item.crowd))
    except OSError as e:
        raise PipsegError(
            f"{path}: cannot write ({e.strerror or e}); check free space and permissions"
        ) from None
    report.written += 1
    report.stats.add(stats)


@dataclass
class SamSource:
    """The ``sam`` label source of `prepare` (`pipseg.data.prepare.models.ModelSource`): runs
    `make_sam_labels` with ``labeller``, degenerate boxes falling back to the ``crf`` label
    (read from `prepare`'s ``crf`` labels when they exist, else made with ``crf``)."""

    labeller: SamLabeller
    crf: CRFConfig = field(default_factory=CRFConfig)

    def __call__(
        self,
        items: Sequence[SamItem],
        out_dir: Path,
        *,
        progress: Callable[[int, int], None] | None = None,
        on_note: Callable[[str], None] | None = None,
    ) -> ModelRun:
        """Label ``items`` into ``out_dir``; the run's box counts and time per image in
        ``stats``, the fallback count in ``notes``."""
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        report = make_sam_labels(
            items, out_dir, self.labeller, fallback=lambda image, boxes: crf_label(image, boxes, self.crf),
            progress=progress, on_note=on_note,
        )  # fmt: skip
        s = report.stats
        stats = {
            "boxes": s.boxes, "fallbacks": s.fallbacks, "nearly_empty": s.empty, "nearly_full": s.full,
            "min_fill": self.labeller.min_fill, "max_fill": self.labeller.max_fill,
            "fill_hist": s.fill_hist.tolist(), "seconds_per_image": report.seconds_per_image,
            "device": self.labeller.device.type,
        }  # fmt: skip
        notes = []
        if s.boxes:
            notes.append(
                f"sam: {s.fallbacks} of {s.boxes} boxes took the crf label ({s.empty} nearly "
                f"empty masks, {s.full} nearly full)"
            )
        return ModelRun(report.written, report.skipped, stats, notes)
