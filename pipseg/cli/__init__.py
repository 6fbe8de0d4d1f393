"""The `pipseg` command line: each command parses options, calls the library and prints."""

from __future__ import annotations

from typing import Annotated

import typer

from pipseg import __version__
from pipseg.cli._common import console
from pipseg.cli.config_cmd import config_app

app = typer.Typer(
    name="pipseg",
    help="Box-supervised semantic segmentation with PIP (pixel prior + box tightness).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(config_app, name="config")

# Command registrations (one import + one app.command line per command) go below.


def _version(value: bool) -> None:
    if value:
        console.print(f"pipseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit."),
    ] = None,
) -> None:
    """Box-supervised semantic segmentation with PIP (pixel prior + box tightness)."""


def main() -> None:
    """Console entry point."""
    app()
