"""`pipseg prepare`: check a VOC dataset, build pseudo labels and splits, write the manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from pipseg.cli._common import console, fail, user_errors
from pipseg.data.prepare import (
    DEFAULT_VOC_ROOT,
    PrepareError,
    PrepareReport,
    discover_sources,
    prepare_dataset,
)
from pipseg.errors import PipsegError


def _classes_file(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    try:
        names = [
            line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
        ]
    except OSError as e:
        raise PipsegError(f"{path}: cannot read the class list ({e})") from None
    if len(names) < 2:
        raise PipsegError(
            f"{path}: a class list needs background plus at least one class, one per line"
        )
    return names


def report_table(report: PrepareReport) -> Table:
    """The summary table: label maps per source and split, missing ones, mIoU against GT."""
    splits = list(report.splits)
    table = Table(title=f"{report.voc_root} -> {report.out_dir}")
    table.add_column("source")
    for split in splits:
        table.add_column(f"{split} ({len(report.splits[split])})", justify="right")
    table.add_column("missing", justify="right")
    table.add_column("new files", justify="right")
    table.add_column("mIoU vs GT (train)", justify="right")
    table.add_row("images", *[str(len(report.splits[s])) for s in splits], "", "", "")
    for kind, source in report.sources.items():
        miou = source.miou.get("train")
        table.add_row(
            kind,
            *[str(source.counts.get(s, "?")) if s in source.for_splits else "-" for s in splits],
            str(len(source.missing_ids)) if source.missing else "-",
            str(source.written),
            f"{100 * miou:.1f}" if miou is not None else "",
        )
    notes = [f"images {report.images}, annotations {report.annotations}"]
    if report.skipped_objects:
        notes.append(f"{report.skipped_objects} objects of unknown classes skipped")
    table.caption = "; ".join(notes + report.notes)
    return table


def prepare(
    voc_root: Annotated[
        Path, typer.Option("--voc-root", help="VOC2012 folder (JPEGImages, Annotations, ...).")
    ] = DEFAULT_VOC_ROOT,
    pseudo: Annotated[
        str, typer.Option(help="Pseudo labels to make from boxes: box,grabcut,crf.")
    ] = "",
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default <voc-root>/pipseg).")
    ] = None,
    sbd_root: Annotated[
        Path | None,
        typer.Option("--sbd-root", help="SBD folder holding benchmark_RELEASE (adds train_aug)."),
    ] = None,
    sdi: Annotated[Path | None, typer.Option(help="Folder of SDI (M&G+) label PNGs.")] = None,
    wssl: Annotated[
        Path | None, typer.Option(help="Folder of WSSL SegmentationClassBboxCRF PNGs.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Worker processes (default: all cores).")
    ] = None,
    classes: Annotated[
        Path | None, typer.Option(help="Text file of class names, one per line, background first.")
    ] = None,
    skip_unknown: Annotated[
        bool, typer.Option("--skip-unknown", help="Skip objects of classes not in the list (counted).")
    ] = False,
    discover: Annotated[
        bool,
        typer.Option(help="Use SBD/WSSL/SDI found in the `pipseg download` layout when not given."),
    ] = True,
) -> None:
    """Check a VOC-layout dataset and build splits, pseudo labels and the manifest training reads."""
    with user_errors():
        kinds = [k.strip() for k in pseudo.split(",") if k.strip()]
        names = _classes_file(classes)
        given = {"sbd_root": sbd_root, "sdi": sdi, "wssl": wssl}
        found = discover_sources(voc_root) if discover else {}
        for key, path in found.items():
            if given[key] is None:
                given[key] = path
                console.print(f"[dim]using {path} for --{key.replace('_', '-')} (download layout)[/]")
        sbd_root, sdi, wssl = given["sbd_root"], given["sdi"], given["wssl"]
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=console, transient=True,
        ) as bar:  # fmt: skip
            tasks: dict[str, int] = {}

            def on_progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done, total=total)

            try:
                report = prepare_dataset(
                    voc_root, out=out, pseudo=kinds, sbd_root=sbd_root, sdi=sdi, wssl=wssl,
                    workers=workers, classes=names, skip_unknown=skip_unknown,
                    progress=on_progress,
                )  # fmt: skip
            except PrepareError as e:
                bar.stop()
                console.print(report_table(e.report))
                raise fail(str(e)) from None
        console.print(report_table(report))
        console.print(f"wrote {report.manifest_path}")
