"""Test-time prediction (docs/METHOD.md section 4): the recipe every prediction in pipseg goes through.

The recipe: pad the image bottom/right to ``pad_size`` (513) with zeros *after* the input
convention is applied (the same as padding with the convention's mean colour), run the network,
upsample the logits bilinearly with ``align_corners=True`` to the padded size, softmax, crop.

Images larger than ``pad_size`` are padded to the smallest ``8k + 1`` at least as large as the
image (the ``513 = 64 * 8 + 1`` family, so the logit grid lines up with pixel corners as it does
at 513). Images of equal padded size can share one forward pass; with the default 513 that is
every VOC image. The evaluation loops that score these predictions live in `pipseg.evaluate`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipseg.errors import PipsegError
from pipseg.models import CHECKPOINT_FORMAT, load_checkpoint
from pipseg.models.convention import InputConvention, prepare_images

TTA_SCALES: tuple[float, ...] = (0.75, 1.0, 1.25)
DEFAULT_PAD_SIZE = 513  # docs/METHOD.md section 4; the recipe of checkpoints that record none (the authors')

Image = np.ndarray | torch.Tensor  # uint8 RGB, [H, W, 3] numpy or [3, H, W] tensor


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a DDP / DataParallel wrapper (its attributes, no forward-time syncs)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel) else model


def model_device(model: nn.Module) -> torch.device:
    """The device the model's parameters live on (CPU for a parameterless model)."""
    param = next(unwrap_model(model).parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def padded_size(height: int, width: int, pad_size: int = 513, stride: int = 8) -> tuple[int, int]:
    """Padded ``(H, W)``: ``pad_size`` for images that fit, else the next ``stride * k + 1``."""

    def side(n: int) -> int:
        return pad_size if n <= pad_size else stride * math.ceil((n - 1) / stride) + 1

    return side(height), side(width)


def checkpoint_pad_size(checkpoint: str | os.PathLike[str]) -> int:
    """The ``eval.pad_size`` recorded in a pipseg checkpoint's config: the size its ``eval`` and
    validation padded to. `DEFAULT_PAD_SIZE` for files that record no config (the authors' weights)."""
    obj = load_checkpoint(checkpoint)
    config = obj.get("config") if obj.get("format") == CHECKPOINT_FORMAT else None
    eval_section = config.get("eval") if isinstance(config, dict) else None
    pad = eval_section.get("pad_size") if isinstance(eval_section, dict) else None
    if pad is None:
        return DEFAULT_PAD_SIZE
    if not isinstance(pad, int) or isinstance(pad, bool) or pad < 1:
        raise PipsegError(f"{checkpoint}: its config's eval.pad_size is {pad!r}, not a positive integer; pass --pad-size")
    return pad


def checkpoint_crf_canvas(checkpoint: str | os.PathLike[str]) -> str:
    """The ``eval.crf_canvas`` recorded in a pipseg checkpoint's config (``image`` when none)."""
    obj = load_checkpoint(checkpoint)
    config = obj.get("config") if obj.get("format") == CHECKPOINT_FORMAT else None
    eval_section = config.get("eval") if isinstance(config, dict) else None
    canvas = eval_section.get("crf_canvas", "image") if isinstance(eval_section, dict) else "image"
    if canvas not in ("image", "padded"):
        raise PipsegError(f"{checkpoint}: its config's eval.crf_canvas is {canvas!r}, not image or padded; pass --crf-canvas")
    return canvas


def to_chw_tensor(image: Image) -> torch.Tensor:
    """An RGB image as a ``[3, H, W]`` tensor (numpy ``[H, W, 3]`` or tensor ``[3, H, W]``)."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
        return torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1)
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an RGB image tensor [3, H, W], got shape {tuple(image.shape)}")
    return image


def to_hwc_uint8(image: Image) -> np.ndarray:
    """An RGB image as a contiguous numpy ``[H, W, 3]`` uint8 array (for CRF and drawing)."""
    if isinstance(image, torch.Tensor):
        image = image.detach().permute(1, 2, 0).cpu().numpy()
    return np.ascontiguousarray(image, dtype=np.uint8)


def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def _forward_padded(
    model: nn.Module,
    images: list[torch.Tensor],
    convention: InputConvention,
    pad_size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    crop: bool = True,
) -> list[torch.Tensor]:
    """The recipe on images that share one padded size: one forward pass for all of them
    (``crop=False``: the probabilities of the whole padded canvas)."""
    out_h, out_w = padded_size(*images[0].shape[-2:], pad_size)
    batch = []
    for img in images:
        h, w = img.shape[-2:]
        if padded_size(h, w, pad_size) != (out_h, out_w):
            raise ValueError("images in one batch must share the same padded size (see padded_size)")
        x = prepare_images(img.to(device, non_blocking=True)[None], convention)
        batch.append(F.pad(x, (0, out_w - w, 0, out_h - h), value=0.0))
    with _autocast(device, amp_dtype):
        logits = model(torch.cat(batch))
    logits = F.interpolate(logits.float(), size=(out_h, out_w), mode="bilinear", align_corners=True)
    probs = logits.softmax(dim=1)
    if not crop:
        return list(probs)
    return [p[:, : img.shape[-2], : img.shape[-1]] for p, img in zip(probs, images, strict=True)]


def _predict_tta(
    model: nn.Module,
    image: torch.Tensor,
    convention: InputConvention,
    pad_size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> torch.Tensor:
    """Mean softmax over scales 0.75/1/1.25 and horizontal flips, each resized back to the image."""
    h, w = image.shape[-2:]
    image = image.to(device, non_blocking=True)  # resize and flip where the model runs
    total = None
    for scale in TTA_SCALES:
        if scale == 1.0:
            scaled = image
        else:
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            scaled = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0]
        for flip in (False, True):
            inp = scaled.flip(-1) if flip else scaled
            probs = _forward_padded(model, [inp], convention, pad_size, device, amp_dtype)[0]
            if flip:
                probs = probs.flip(-1)
            if probs.shape[-2:] != (h, w):
                probs = F.interpolate(probs[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            total = probs if total is None else total + probs
    return total / (2 * len(TTA_SCALES))


def predict_probs_batch(
    model: nn.Module,
    images: Sequence[Image] | torch.Tensor,
    *,
    pad_size: int = 513,
    device: torch.device | str | None = None,
    tta: bool = False,
    amp_dtype: torch.dtype | None = None,
    crop: bool = True,
) -> list[torch.Tensor]:
    """Class probabilities ``[C, H_i, W_i]`` float32 (on ``device``) for several images.

    ``images``: uint8 RGB images (numpy ``[H, W, 3]`` or tensors ``[3, H, W]``, or one tensor
    ``[B, 3, H, W]``) that share one `padded_size` (e.g. all at most ``pad_size``); they go through
    the network as one batch. ``device`` defaults to the model's; the model must already be there.
    With ``tta`` each image is run on its own at scales 0.75/1/1.25, with and without flip.
    ``crop=False`` returns the whole padded canvas ``[C, *padded_size]`` (not with ``tta``).
    """
    net = unwrap_model(model)
    device = torch.device(device) if device is not None else model_device(net)
    convention: InputConvention = net.input_convention
    tensors = [to_chw_tensor(img) for img in images]
    if not tensors:
        return []
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            if tta:
                if not crop:
                    raise PipsegError("test-time augmentation has no padded canvas; drop --tta or use eval.crf_canvas=image")
                return [_predict_tta(net, t, convention, pad_size, device, amp_dtype) for t in tensors]
            return _forward_padded(net, tensors, convention, pad_size, device, amp_dtype, crop)
    finally:
        net.train(was_training)


def predict_probs(
    model: nn.Module,
    image_rgb: Image,
    *,
    pad_size: int = 513,
    device: torch.device | str | None = None,
    tta: bool = False,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Class probabilities ``[C, H, W]`` float32 for one uint8 RGB image (docs/METHOD.md section 4).

    The tensor is on ``device`` (default: the model's device).
    """
    return predict_probs_batch(
        model, [image_rgb], pad_size=pad_size, device=device, tta=tta, amp_dtype=amp_dtype
    )[0]


# ---------------------------------------------------------------------------------------------
# Large images: downscale (``max_side``) and / or sliding window (``tile``)


def fit_max_side(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """``(H, W)`` scaled (aspect kept, rounded) so the longer side is at most ``max_side``."""
    if max_side is None or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of windows of ``tile`` covering ``0..length`` with at least ``overlap`` shared;
    the last window ends at ``length`` exactly, so every window has the full size."""
    if length <= tile:
        return [0]
    stride = max(1, tile - overlap)
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def _window_rows(
    model: nn.Module,
    image_rgb: np.ndarray,
    tile: int,
    overlap: int,
    pad_size: int,
    device: torch.device | str | None,
    amp_dtype: torch.dtype | None,
    batch_size: int,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """For each row of ``tile`` windows, top to bottom: its first image row ``y``, the sum of its
    windows' probabilities ``[C, h, W]`` and how many windows cover each pixel ``[h, W]`` (CPU)."""
    if overlap >= tile:
        raise PipsegError(f"--overlap {overlap}: must be smaller than the tile size {tile}")
    height, width = image_rgb.shape[:2]
    xs = tile_starts(width, tile, overlap)
    for y in tile_starts(height, tile, overlap):
        h = min(tile, height)
        total: torch.Tensor | None = None
        count = torch.zeros(h, width)
        for i in range(0, len(xs), batch_size):
            chunk = xs[i : i + batch_size]
            crops = [np.ascontiguousarray(image_rgb[y : y + h, x : x + tile]) for x in chunk]
            probs = predict_probs_batch(model, crops, pad_size=pad_size, device=device, amp_dtype=amp_dtype)
            for x, prob in zip(chunk, probs, strict=True):
                total = torch.zeros(prob.shape[0], h, width) if total is None else total
                w = prob.shape[-1]
                total[:, :, x : x + w] += prob.cpu()
                count[:, x : x + w] += 1
        assert total is not None
        yield y, total, count


def predict_probs_tiled(
    model: nn.Module,
    image_rgb: np.ndarray,
    *,
    tile: int = 513,
    overlap: int = 128,
    pad_size: int = 513,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
    batch_size: int = 4,
) -> torch.Tensor:
    """Class probabilities ``[C, H, W]`` float32 on the CPU from overlapping ``tile`` windows,
    averaged where they overlap. Memory: ``4 * (C + 1) * H * W`` bytes for the sums plus one
    batch of windows through the network (`predict_label_tiled` needs far less)."""
    height, width = image_rgb.shape[:2]
    total: torch.Tensor | None = None
    count = torch.zeros(height, width)
    for y, row_total, row_count in _window_rows(model, image_rgb, tile, overlap, pad_size, device, amp_dtype, batch_size):
        total = torch.zeros(row_total.shape[0], height, width) if total is None else total
        total[:, y : y + row_total.shape[1]] += row_total
        count[y : y + row_count.shape[0]] += row_count
    assert total is not None
    return total.div_(count)


def predict_label_tiled(
    model: nn.Module,
    image_rgb: np.ndarray,
    *,
    tile: int = 513,
    overlap: int = 128,
    pad_size: int = 513,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
    batch_size: int = 4,
) -> np.ndarray:
    """The arg-max ``[H, W]`` uint8 of `predict_probs_tiled`, computed band by band: rows no later
    window touches are decided and dropped, so the sums held are at most two window rows tall
    (``4 * (C + 1) * 2 * tile * W`` bytes) instead of the whole image."""
    height, width = image_rgb.shape[:2]
    label = np.empty((height, width), np.uint8)
    starts = tile_starts(height, tile, overlap) + [height]
    top, total, count = 0, None, torch.zeros(0, width)
    rows = _window_rows(model, image_rgb, tile, overlap, pad_size, device, amp_dtype, batch_size)
    for i, (y, row_total, row_count) in enumerate(rows):
        bottom = y + row_count.shape[0]
        grow = bottom - top - count.shape[0]
        total = row_total.new_zeros(row_total.shape[0], 0, width) if total is None else total
        if grow > 0:
            total = torch.cat([total, row_total.new_zeros(total.shape[0], grow, width)], dim=1)
            count = torch.cat([count, count.new_zeros(grow, width)])
        total[:, y - top :] += row_total
        count[y - top :] += row_count
        done = starts[i + 1] - top  # rows above the next window row are final
        label[top : top + done] = total[:, :done].argmax(0).to(torch.uint8).numpy()
        total, count, top = total[:, done:], count[done:], top + done
    return label


def predict_probs_large(
    model: nn.Module,
    image_rgb: np.ndarray,
    *,
    max_side: int | None = None,
    tile: int | None = None,
    overlap: int = 128,
    pad_size: int = 513,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
    tta: bool = False,
) -> tuple[torch.Tensor, np.ndarray]:
    """Probabilities ``[C, h, w]`` on the CPU and the image they belong to (``h, w`` after the
    ``max_side`` downscale; the caller scales the label map back to the input's size with
    `upscale_label`). ``tile`` switches on the sliding window; without either it is `predict_probs`."""
    work = _downscaled(image_rgb, max_side)
    if tile is not None and max(work.shape[:2]) > tile:
        if tta:
            raise PipsegError("--tta and --tile together are not supported; choose one")
        probs = predict_probs_tiled(model, work, tile=tile, overlap=overlap, pad_size=max(pad_size, tile),
                                    device=device, amp_dtype=amp_dtype)  # fmt: skip
    else:
        probs = predict_probs(model, work, pad_size=pad_size, device=device, tta=tta, amp_dtype=amp_dtype).cpu()
    return probs, work


def upscale_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A label map resized to ``(H, W)`` by nearest neighbour (class ids stay class ids)."""
    if label.shape == tuple(size):
        return label
    return cv2.resize(label, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


@dataclass(frozen=True)
class LargeImages:
    """Large-image options of the test recipe (`predict_probs_large`):
    downscale to ``max_side``, and / or a sliding window of ``tile`` pixels with ``overlap``."""

    max_side: int | None = None
    tile: int | None = None
    overlap: int = 128

    @property
    def active(self) -> bool:
        """Whether images go through the large-image path at all."""
        return self.max_side is not None or self.tile is not None

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `predict_image`."""
        return {"max_side": self.max_side, "tile": self.tile, "overlap": self.overlap}


@dataclass(frozen=True)
class Prediction:
    """One image through the test recipe: the probabilities ``[C, h, w]`` of ``image`` (the input,
    or its ``max_side`` downscale), the input's ``size`` ``(H, W)``, and with ``canvas`` the
    probabilities of the whole padded canvas ``[C, Hp, Wp]`` (for DenseCRF on the canvas).
    A sliding window that kept no probabilities holds only its ``argmax`` ``[h, w]``."""

    probs: torch.Tensor | None
    image: np.ndarray
    size: tuple[int, int]
    canvas: torch.Tensor | None = None
    argmax: np.ndarray | None = None

    def label(self) -> np.ndarray:
        """Class indices ``[H, W]`` uint8 at the input's size."""
        if self.argmax is not None:
            return upscale_label(self.argmax, self.size)
        assert self.probs is not None
        return upscale_label(self.probs.argmax(0).to(torch.uint8).cpu().numpy(), self.size)

    def refined(self, crf: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
        """Class indices ``[H, W]`` uint8 after ``crf(image, probs)``: on the padded canvas when the
        prediction holds one (`pipseg.crf.refine_on_canvas`), else on the image."""
        from pipseg.crf import refine_on_canvas

        assert self.probs is not None, "a prediction without probabilities cannot be refined"
        if self.canvas is not None:
            label = refine_on_canvas(crf, self.image, self.canvas.float().cpu().numpy())
        else:
            label = crf(self.image, self.probs.float().cpu().numpy())
        return upscale_label(np.asarray(label, dtype=np.uint8), self.size)


def predict_image(
    model: nn.Module,
    image_rgb: np.ndarray,
    *,
    pad_size: int = 513,
    device: torch.device | str | None = None,
    tta: bool = False,
    amp_dtype: torch.dtype | None = None,
    max_side: int | None = None,
    tile: int | None = None,
    overlap: int = 128,
    canvas: bool = False,
    need_probs: bool = True,
) -> Prediction:
    """One uint8 RGB ``[H, W, 3]`` image through the test recipe, with the large-image options
    (`predict_probs_large`); ``canvas`` keeps the padded canvas (not with a sliding window).
    Without ``need_probs`` a sliding window keeps only its labels (`predict_label_tiled`)."""
    size = image_rgb.shape[:2]
    if not need_probs and tile is not None and not canvas and not tta:
        work = _downscaled(image_rgb, max_side)
        if max(work.shape[:2]) > tile:
            labels = predict_label_tiled(model, work, tile=tile, overlap=overlap, pad_size=max(pad_size, tile),
                                         device=device, amp_dtype=amp_dtype)  # fmt: skip
            return Prediction(None, work, size, argmax=labels)
    if canvas:
        if tile is not None:
            raise PipsegError("eval.crf_canvas=padded needs the whole image in one canvas; drop --tile")
        work = _downscaled(image_rgb, max_side)
        full = predict_probs_batch(model, [work], pad_size=pad_size, device=device, tta=tta,
                                   amp_dtype=amp_dtype, crop=False)[0]  # fmt: skip
        return Prediction(full[:, : work.shape[0], : work.shape[1]], work, size, full)
    probs, work = predict_probs_large(model, image_rgb, max_side=max_side, tile=tile, overlap=overlap,
                                      pad_size=pad_size, device=device, amp_dtype=amp_dtype, tta=tta)  # fmt: skip
    return Prediction(probs, work, size)


def _downscaled(image_rgb: np.ndarray, max_side: int | None) -> np.ndarray:
    height, width = image_rgb.shape[:2]
    size = fit_max_side(height, width, max_side)
    if size == (height, width):
        return image_rgb
    return cv2.resize(image_rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA)
