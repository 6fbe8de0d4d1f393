"""Shared CLI plumbing: consoles, and turning library errors into one line and exit code 2."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from pipseg.errors import PipsegError

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` (one line per problem) to stderr and return the Exit to raise."""
    for line in str(message).splitlines() or [""]:
        err_console.print(f"[bold red]error:[/] {line}", markup=True, highlight=False, soft_wrap=True)
    return typer.Exit(code=code)


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


@contextmanager
def user_errors() -> Iterator[None]:
    """Run a command body; a `PipsegError` becomes its message on stderr and exit code 2."""
    try:
        yield
    except PipsegError as e:
        raise fail(str(e)) from None
