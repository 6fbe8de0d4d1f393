"""The `pipseg` command line: each command parses options, calls the library and prints."""

from __future__ import annotations

from typing import Annotated

import typer

from pipseg import __version__
from pipseg.cli._common import console
from pipseg.cli.config_cmd import config_app
from pipseg.cli.crf_cmd import crf
from pipseg.cli.demo_cmd import demo
from pipseg.cli.download_cmd import download
from pipseg.cli.eval_cmd import eval_
from pipseg.cli.export_cmd import export
from pipseg.cli.predict_cmd import predict
from pipseg.cli.prepare_cmd import prepare
from pipseg.cli.train_cmd import train

app = typer.Typer(
    name="pipseg",
    help="Box-supervised semantic segmentation with PIP (pixel prior + box tightness).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("download")(download)
app.command("prepare")(prepare)
app.command("train")(train)
app.command("predict")(predict)
app.command("crf")(crf)
app.command("eval")(eval_)
app.command("export")(export)
app.command("demo")(demo)
app.add_typer(config_app, name="config")


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
