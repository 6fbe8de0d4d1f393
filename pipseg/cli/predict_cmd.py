"""`pipseg predict`: label maps (and overlays / probabilities) for image files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipseg.cli._common import (
    CheckpointOpt,
    DeviceOpt,
    finish_file_run,
    progress_bar,
    require_checkpoint,
    user_errors,
)
from pipseg.errors import PipsegError


def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files, folders (searched recursively) or .txt lists of paths")],
    checkpoint: CheckpointOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder")] = Path("predictions"),
    crf: Annotated[bool, typer.Option("--crf", help="Refine with DenseCRF (docs/METHOD.md section 4 settings)")] = False,
    overlay: Annotated[bool, typer.Option("--overlay", help="Also write <name>.overlay.jpg with a class legend")] = False,
    save_probs: Annotated[bool, typer.Option("--save-probs", help="Also write <name>.npz (float16 probabilities) for `pipseg crf`")] = False,
    tta: Annotated[bool, typer.Option("--tta", help="Average over flips and scales 0.75/1/1.25 (6x slower)")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs (default: skip those images)")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass")] = 4,
    pad_size: Annotated[int, typer.Option("--pad-size", min=1, help="Pad images to at least this size (test recipe)")] = 513,
    device: DeviceOpt = "auto",
) -> None:
    """Predict segmentation maps for images (palette PNGs in --out)."""
    from pipseg.crf import DenseCRF
    from pipseg.device import resolve_device
    from pipseg.models import model_from_checkpoint
    from pipseg.predict import collect_inputs, predict_files

    with user_errors():
        ckpt = require_checkpoint(checkpoint)
        dev = resolve_device(device)
        inputs = collect_inputs(images)
        if not inputs:
            raise PipsegError(f"{' '.join(map(str, images))}: no images found (extensions: jpg, png, bmp, webp, tif)")
        model, meta = model_from_checkpoint(ckpt, dev)
        with progress_bar("predict") as update:
            summary = predict_files(
                model, inputs, out, classes=meta["classes"], pad_size=pad_size, device=dev,
                batch_size=batch_size, tta=tta, crf=DenseCRF() if crf else None, overlay=overlay,
                probs=save_probs, overwrite=overwrite, progress=update, checkpoint=ckpt,
            )  # fmt: skip
    finish_file_run(summary.written, summary.skipped, summary.failed, out, failed_word="unreadable")
