"""`pipseg predict`: label maps (and overlays / probabilities) for image files."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pipseg.cli._common import err_console, finish_file_run, user_errors
from pipseg.errors import PipsegError

CheckpointOpt = Annotated[
    Path | None,
    typer.Option("--checkpoint", "-c", envvar="PIPSEG_CHECKPOINT", show_envvar=True,
                  help="Checkpoint from `pipseg train`, or the authors' DeepLab-LargeFOV .pth"),
]  # fmt: skip
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N")]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else must be usable here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PipsegError(f"--device {name}: not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PipsegError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def require_checkpoint(checkpoint: Path | None) -> Path:
    """The checkpoint path, or a one-line error saying how to give one."""
    if checkpoint is None:
        raise PipsegError("--checkpoint: no checkpoint given; pass --checkpoint FILE or set PIPSEG_CHECKPOINT")
    return checkpoint


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, int | None], None]]:
    """A rich progress bar (on stderr) driven by a ``progress(done, total)`` callback."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files, folders (searched recursively) or .txt lists of paths")],
    checkpoint: CheckpointOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder")] = Path("predictions"),
    crf: Annotated[bool, typer.Option("--crf", help="Refine with DenseCRF (PIP.md section 4 settings)")] = False,
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
