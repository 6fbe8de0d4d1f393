"""`pipseg export`: a checkpoint as ONNX or TorchScript, checked against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from pipseg.cli._common import console, user_errors


def export(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint from `pipseg train` (or the authors' .pth)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file, e.g. model.onnx")],
    fmt: Annotated[Literal["onnx", "torchscript"], typer.Option("--format", "-f", help="onnx or torchscript")] = "onnx",
    labels: Annotated[bool, typer.Option("--labels", help="Add an argmax 'labels' output [B, H, W]")] = False,
    input_dtype: Annotated[Literal["float32", "uint8"], typer.Option("--input-dtype", help="Dtype of the 'images' input (values 0..255)")] = "float32",
    check: Annotated[bool, typer.Option("--check/--no-check", help="Run the file and compare with PyTorch")] = True,
) -> None:
    """Export a checkpoint to ONNX or TorchScript (input: RGB 0..255, output: class probabilities)."""
    from pipseg.export import export_model, sidecar_path
    from pipseg.models import model_from_checkpoint

    with user_errors():
        model, meta = model_from_checkpoint(checkpoint, "cpu")
        info = export_model(model, meta, out, fmt=fmt, input_dtype=input_dtype, with_labels=labels, check=check,
                            source=checkpoint)
    checked = f", max |diff| vs PyTorch {info['max_abs_diff']:.1e}" if info["max_abs_diff"] is not None else ""
    console.print(f"wrote {out} ({fmt}{checked}) and {sidecar_path(out)}", highlight=False, soft_wrap=True)
