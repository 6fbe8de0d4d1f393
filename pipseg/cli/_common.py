"""What every command shares: the consoles, the options several commands take, one-line errors.

Kept light (typer and rich only) because ``pipseg --version`` and ``--help`` import it; commands
import torch and the rest of the library inside their functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from pipseg.errors import PipsegError

console = Console()
err_console = Console(stderr=True)

ConfigArg = Annotated[Path, typer.Argument(help="YAML config, e.g. configs/sdi.yaml")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key, e.g. --set optim.lr=0.0005 (repeatable)."),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option("--checkpoint", "-c", envvar="PIPSEG_CHECKPOINT", show_envvar=True,
                 help="Checkpoint from `pipseg train`, or the authors' DeepLab-LargeFOV .pth."),
]  # fmt: skip
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", "-j", min=1, help="Worker processes (default: all cores).")
]

MaxSideOpt = Annotated[
    int | None,
    typer.Option("--max-side", min=32, show_default=False,
                 help="Large images: downscale so the longer side is at most N, predict, scale the labels back."),
]  # fmt: skip
TileOpt = Annotated[
    int | None,
    typer.Option("--tile", min=32, show_default=False,
                 help="Large images: sliding window of NxN tiles (e.g. 513), probabilities averaged where tiles overlap."),
]  # fmt: skip
OverlapOpt = Annotated[int, typer.Option("--overlap", min=0, help="Pixels neighbouring --tile windows share.")]
AlphaOpt = Annotated[float, typer.Option("--alpha", min=0.0, max=1.0, help="Overlay opacity of the class colours (0..1).")]


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` (one line per problem) to stderr and return the Exit to raise."""
    for line in str(message).splitlines() or [""]:
        err_console.print(f"[bold red]error:[/] {escape(line)}", markup=True, highlight=False, soft_wrap=True)
    return typer.Exit(code=code)


def warn(message: str) -> None:
    """Print one warning line to stderr (the library's ``on_warning`` callbacks)."""
    err_console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """Run a command body; a `PipsegError` becomes its message on stderr and exit code 2."""
    try:
        yield
    except PipsegError as e:
        raise fail(str(e)) from None


def require_checkpoint(checkpoint: Path | None) -> Path:
    """The checkpoint path, or a one-line error saying how to give one."""
    if checkpoint is None:
        raise PipsegError("--checkpoint: no checkpoint given; pass --checkpoint FILE or set PIPSEG_CHECKPOINT")
    return checkpoint


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, int | None], None]]:
    """A rich progress bar (on stderr) driven by a ``progress(done, total)`` callback."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def finish_file_run(written: int, skipped: int, failed: list[tuple[str, str]], out: object,
                    failed_word: str = "failed", extra: str = "") -> None:
    """Report a per-file run: each failure on stderr, one summary line; exit 1 if any failed."""
    for _, message in failed:
        err_console.print(f"[yellow]skipped:[/] {message}", highlight=False, soft_wrap=True)
    console.print(
        f"{written} written, {skipped} already there, {len(failed)} {failed_word}{extra} -> {out}",
        highlight=False, soft_wrap=True,
    )  # fmt: skip
    if failed:
        raise typer.Exit(code=1)
