"""`pipseg browse`: look at a prepared dataset's boxes, pseudo labels and ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipseg.cli._common import console, progress_bar, user_errors


def browse(
    prepared: Annotated[Path, typer.Argument(help="Prepared folder (holding manifest.json), e.g. data/VOC2012/pipseg")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the contact sheets")] = Path("browse"),
    split: Annotated[str | None, typer.Option("--split", help="Only this prepared split (e.g. train, val); default: every image", show_default=False)] = None,
    source: Annotated[list[str] | None, typer.Option("--source", help="Label source to show (repeatable; default: every prepared pseudo-label source)", show_default=False)] = None,
    per_sheet: Annotated[int, typer.Option("--per-sheet", min=1, help="Images per contact sheet")] = 8,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Show only the first N images (worst first)", show_default=False)] = None,
    height: Annotated[int, typer.Option("--height", min=32, help="Height of each picture on the sheets, in pixels")] = 160,
) -> None:
    """Contact sheets of a prepared dataset: images with their boxes, every pseudo-label source, ground truth."""
    from pipseg.browse import browse_dataset

    with user_errors(), progress_bar("browse") as update:
        shown = browse_dataset(prepared, out, split=split, sources=source, per_sheet=per_sheet, limit=limit,
                               height=height, progress=update)  # fmt: skip
    sheets = sorted({row.sheet for row in shown})
    scored = [row for row in shown if row.miou == row.miou]
    order = "worst pseudo labels first" if scored else "no ground truth: in id order"
    console.print(f"{len(shown)} images on {len(sheets)} sheets ({order}) -> {out}", highlight=False, soft_wrap=True)
    if scored:
        worst = ", ".join(f"{r.sample_id} {100 * r.miou:.1f}" for r in scored[:5])
        console.print(f"worst (mean pseudo-label mIoU vs ground truth): {worst}", highlight=False, soft_wrap=True)
