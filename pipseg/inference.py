"""Test-time prediction (PIP.md section 4) and the evaluation loop shared by `eval` and training.

The recipe: pad the image bottom/right to ``pad_size`` (513) with zeros *after* the input
convention is applied (the same as padding with the convention's mean colour), run the network,
upsample the logits bilinearly with ``align_corners=True`` to the padded size, softmax, crop.

Images larger than ``pad_size`` are padded to the smallest ``8k + 1`` at least as large as the
image (the ``513 = 64 * 8 + 1`` family, so the logit grid lines up with pixel corners as it does
at 513). Images of equal padded size can share one forward pass; with the default 513 that is
every VOC image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipseg.errors import PipsegError
from pipseg.metrics import ConfusionMatrix
from pipseg.models.convention import InputConvention, prepare_images

TTA_SCALES: tuple[float, ...] = (0.75, 1.0, 1.25)

Image = np.ndarray | torch.Tensor  # uint8 RGB, [H, W, 3] numpy or [3, H, W] tensor


def _bare(model: nn.Module) -> nn.Module:
    """The model inside a DDP / DataParallel wrapper (its attributes, no forward-time syncs)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel) else model


def model_device(model: nn.Module) -> torch.device:
    """The device the model's parameters live on (CPU for a parameterless model)."""
    param = next(_bare(model).parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def padded_size(height: int, width: int, pad_size: int = 513, stride: int = 8) -> tuple[int, int]:
    """Padded ``(H, W)``: ``pad_size`` for images that fit, else the next ``stride * k + 1``."""

    def side(n: int) -> int:
        return pad_size if n <= pad_size else stride * math.ceil((n - 1) / stride) + 1

    return side(height), side(width)


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
) -> list[torch.Tensor]:
    """The recipe on images that share one padded size: one forward pass for all of them."""
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
) -> list[torch.Tensor]:
    """Class probabilities ``[C, H_i, W_i]`` float32 (on ``device``) for several images.

    ``images``: uint8 RGB images (numpy ``[H, W, 3]`` or tensors ``[3, H, W]``, or one tensor
    ``[B, 3, H, W]``) that share one `padded_size` (e.g. all at most ``pad_size``); they go through
    the network as one batch. ``device`` defaults to the model's; the model must already be there.
    With ``tta`` each image is run on its own at scales 0.75/1/1.25, with and without flip.
    """
    net = _bare(model)
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
                return [_predict_tta(net, t, convention, pad_size, device, amp_dtype) for t in tensors]
            return _forward_padded(net, tensors, convention, pad_size, device, amp_dtype)
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
    """Class probabilities ``[C, H, W]`` float32 for one uint8 RGB image (PIP.md section 4).

    The tensor is on ``device`` (default: the model's device).
    """
    return predict_probs_batch(
        model, [image_rgb], pad_size=pad_size, device=device, tta=tta, amp_dtype=amp_dtype
    )[0]


# ---------------------------------------------------------------------------------------------
# Evaluation


def _as_triple(sample: Any) -> tuple[Image, Any, str]:
    if isinstance(sample, dict):
        return sample["image"], sample["label"], str(sample["id"])
    image, label, sample_id = sample
    return image, label, str(sample_id)


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _shard(samples: Iterable[Any] | Sequence[Any], rank: int, world: int) -> Iterator[Any]:
    """This rank's samples: every ``world``-th, starting at ``rank`` (indexable: no wasted loads)."""
    if world == 1:
        yield from samples
    elif hasattr(samples, "__len__") and hasattr(samples, "__getitem__"):
        for i in range(rank, len(samples), world):  # type: ignore[arg-type]
            yield samples[i]  # type: ignore[index]
    else:
        for i, sample in enumerate(samples):
            if i % world == rank:
                yield sample


def _label_tensor(label: Any, device: torch.device) -> torch.Tensor:
    if isinstance(label, np.ndarray):
        label = torch.from_numpy(np.ascontiguousarray(label))
    return label.to(device=device, dtype=torch.long, non_blocking=True)


def evaluate_model(
    model: nn.Module,
    samples: Iterable[Any],
    *,
    num_classes: int,
    pad_size: int = 513,
    device: torch.device | str | None = None,
    crf: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    batch_size: int = 1,
    tta: bool = False,
    amp_dtype: torch.dtype | None = None,
    shard: bool = True,
) -> dict[str, Any]:
    """Score a model on labelled images with the test recipe; returns `ConfusionMatrix.compute()`.

    ``samples``: ``(image, label, id)`` tuples or `SegDataset(train=False)` dicts (``image`` uint8
    RGB numpy ``[H, W, 3]`` or tensor ``[3, H, W]``, ``label`` ``[H, W]`` with 255 ignored).
    ``crf(image_hwc_uint8, probs_chw_float32) -> labels`` (e.g. `pipseg.crf.DenseCRF`) adds a
    ``"crf"`` sub-dict with the same figures after CRF; the top level is always without CRF.
    ``progress(done, total)`` is called after each image (total is None for plain iterables).
    Consecutive images with the same padded size run as one batch of up to ``batch_size``.
    Under torch.distributed each rank scores every world-size-th sample (pass ``shard=False`` when
    ``samples`` is already split per rank, e.g. a loader with a DistributedSampler) and the
    matrices are summed, so every rank returns the full result. Batches from a loader with
    `collate_list` (lists of dicts) are accepted too. The model's train/eval mode is restored.
    """

    net = _bare(model)
    device = torch.device(device) if device is not None else model_device(net)
    rank, world = _dist_rank_world()
    shard_rank, shards = (rank, world) if shard else (0, 1)
    total = len(samples) if hasattr(samples, "__len__") else None  # type: ignore[arg-type]
    if total is not None:
        total = len(range(shard_rank, total, shards))
    cm = ConfusionMatrix(num_classes)
    cm_crf = ConfusionMatrix(num_classes) if crf is not None else None
    for matrix in (cm, cm_crf):
        if matrix is not None:  # on the device even for an empty shard: NCCL reduces CUDA tensors only
            matrix.matrix = matrix.matrix.to(device)
    done = 0

    def flush(pending: list[tuple[Image, Any, str]]) -> None:
        nonlocal done
        probs = predict_probs_batch(
            net, [p[0] for p in pending], pad_size=pad_size, device=device, tta=tta, amp_dtype=amp_dtype
        )
        for (image, label, sample_id), prob in zip(pending, probs, strict=True):
            target = _label_tensor(label, device)
            if target.shape != prob.shape[-2:]:
                raise PipsegError(
                    f"{sample_id}: label size {tuple(target.shape)} != image size "
                    f"{tuple(prob.shape[-2:])}; labels must match their images"
                )
            cm.update(prob.argmax(0), target)
            if cm_crf is not None:
                refined = crf(to_hwc_uint8(image), prob.cpu().numpy())
                cm_crf.update(torch.from_numpy(np.asarray(refined)).to(device), target)
            done += 1
            if progress is not None:
                progress(done, total)

    pending: list[tuple[Image, Any, str]] = []
    key = None
    for item in _shard(samples, shard_rank, shards):
        batch = isinstance(item, list) and item and isinstance(item[0], dict)
        if batch:
            total = None  # len(samples) counted batches, not images
        for sample in item if batch else [item]:
            image, label, sample_id = _as_triple(sample)
            sample_key = padded_size(*to_chw_tensor(image).shape[-2:], pad_size)
            if pending and (sample_key != key or len(pending) >= batch_size):
                flush(pending)
                pending = []
            pending.append((image, label, sample_id))
            key = sample_key
    if pending:
        flush(pending)

    if world > 1:
        cm.reduce_from_all_processes()
        if cm_crf is not None:
            cm_crf.reduce_from_all_processes()
    result = dict(cm.compute())
    if cm_crf is not None:
        result["crf"] = dict(cm_crf.compute())
    return result
