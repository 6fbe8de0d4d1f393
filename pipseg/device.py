"""The one place a device name (``auto``, ``cpu``, ``cuda``, ``cuda:N``) becomes a torch device."""

from __future__ import annotations

import torch

from pipseg.errors import PipsegError


def resolve_device(name: str, *, local_rank: int | None = None, option: str = "--device") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` -> ``cuda:local_rank`` (one GPU per
    torchrun process); ``cpu`` and ``cuda:N`` as given. ``option`` names the flag or config key
    the name came from, so the error speaks the user's words."""
    name = name.strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PipsegError(f"{option} {name}: not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise PipsegError(f"{option} {name}: pipseg runs on cpu or cuda; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PipsegError(f"{option} {name}: CUDA is not available on this machine; use cpu (or auto)")
        index = device.index if device.index is not None else (local_rank or 0)
        if index >= torch.cuda.device_count():
            raise PipsegError(
                f"{option} {name}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                f"use cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
        device = torch.device("cuda", index)
    return device
