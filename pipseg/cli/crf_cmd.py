"""`pipseg crf`: DenseCRF over probabilities saved by `pipseg predict --save-probs`, in parallel."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipseg.cli._common import (
    SetOpt,
    WorkersOpt,
    err_console,
    finish_file_run,
    progress_bar,
    user_errors,
)


def crf(
    images: Annotated[Path, typer.Option("--images", help="Folder of the images (e.g. VOC2012/JPEGImages)")],
    probs: Annotated[Path, typer.Option("--probs", help="Folder of <name>.npz files from `pipseg predict --save-probs`")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder of palette PNGs")] = Path("predictions_crf"),
    workers: WorkersOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo outputs that exist (default: resume)")] = False,
    config: Annotated[Path | None, typer.Option("--config", help="Take the crf: section of this config")] = None,
    overrides: SetOpt = None,
) -> None:
    """Refine saved probabilities with DenseCRF (resumable, all cores)."""
    from pipseg.config import load_config
    from pipseg.crf import DenseCRF
    from pipseg.crf.folder import crf_folder

    with user_errors():
        cfg = load_config(config, overrides)
        with progress_bar("crf") as update:
            summary = crf_folder(
                images, probs, out, DenseCRF.from_config(cfg.crf), workers, update, overwrite=overwrite
            )
    for message in summary.warnings:
        err_console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
    used = f" ({summary.workers} worker{'s' if summary.workers > 1 else ''})"
    finish_file_run(summary.written, summary.skipped, summary.failed, out, extra=used)
