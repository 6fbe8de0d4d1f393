"""What both losses share: input checks and the precision they compute in."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off inside a loss: its matmuls and logs would otherwise run in half precision."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()  # e.g. the meta device


def compute_dtype(logits: Tensor) -> torch.dtype:
    """Float32 for half-precision logits (softmax, logs and weights need it), else their own."""
    return torch.float32 if logits.dtype in (torch.float16, torch.bfloat16) else logits.dtype


def check_shapes(logits: Tensor, labels: Tensor, boxes: Tensor | None) -> None:
    """Raise ValueError unless ``logits [B,C,H,W]``, ``labels [B,H,W]``, ``boxes [B,M,5]`` agree."""
    if logits.dim() != 4 or logits.numel() == 0:
        raise ValueError(f"logits must be a non-empty [B,C,H,W], got {tuple(logits.shape)}")
    b, _, h, w = logits.shape
    if tuple(labels.shape) != (b, h, w):
        raise ValueError(f"labels must be [B,H,W]={(b, h, w)}, got {tuple(labels.shape)}")
    if boxes is not None and (boxes.dim() != 3 or boxes.shape[0] != b or boxes.shape[2] != 5):
        raise ValueError(f"boxes must be [B,M,5] with B={b}, got {tuple(boxes.shape)}")
