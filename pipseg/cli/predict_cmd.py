"""`pipseg predict`: label maps (and overlays / probabilities) for image files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from pipseg.cli._common import (
    AlphaOpt,
    CheckpointOpt,
    DeviceOpt,
    MaxSideOpt,
    OverlapOpt,
    TileOpt,
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
    crf_canvas: Annotated[Literal["image", "padded"] | None, typer.Option("--crf-canvas", show_default=False,
                                                   help="Where --crf runs: on the image, or on the padded canvas as the published code (docs/METHOD.md section 6); default: the checkpoint's eval.crf_canvas")] = None,
    overlay: Annotated[bool, typer.Option("--overlay", help="Also write <name>.overlay.png with a class legend beside it")] = False,
    alpha: AlphaOpt = 0.5,
    legend: Annotated[bool, typer.Option("--legend/--no-legend", help="Put a class legend beside each overlay")] = True,
    save_probs: Annotated[bool, typer.Option("--save-probs", help="Also write <name>.npz (float16 probabilities) for `pipseg crf`")] = False,
    tta: Annotated[bool, typer.Option("--tta", help="Average over flips and scales 0.75/1/1.25 (6x slower)")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs (default: skip those images)")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass")] = 4,
    pad_size: Annotated[int | None, typer.Option("--pad-size", min=1, show_default=False, help="Pad images to at least this size (test recipe); default: the checkpoint's eval.pad_size, else 513")] = None,
    max_side: MaxSideOpt = None,
    tile: TileOpt = None,
    overlap: OverlapOpt = 128,
    device: DeviceOpt = "auto",
) -> None:
    """Predict segmentation maps for images (palette PNGs in --out).

    Large images: a 6000x4000 photo needs about 5.3 GB of memory with the tiny model and far more with vgg16_largefov when predicted whole. --tile 513 slides a 513x513 window (4 at a time) and keeps only two window rows of sums, so memory grows with the image's width, not its height: about 2.6 GB on CPU for a 6000-pixel-wide image with vgg16_largefov (2 GB with the tiny model), at the cost of recomputing the --overlap; --max-side N predicts a copy scaled down to N pixels on its longer side (about 1.5 GB with vgg16_largefov for N = 1024) and scales the labels back up. --crf and --save-probs keep the full-size probabilities, 4 x classes x pixels bytes (2 GB for 21 classes at 6000x4000).
    """
    from pipseg.crf import DenseCRF
    from pipseg.device import resolve_device
    from pipseg.inference import LargeImages
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
                large=LargeImages(max_side, tile, overlap), crf_canvas=crf_canvas, alpha=alpha, legend=legend,
            )  # fmt: skip
    finish_file_run(summary.written, summary.skipped, summary.failed, out, failed_word="unreadable")
