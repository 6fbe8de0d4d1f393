"""`pipseg config show`: print the fully resolved config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.syntax import Syntax

from pipseg.cli._common import console, user_errors
from pipseg.config import dump_config, load_config

config_app = typer.Typer(help="Inspect configs.", no_args_is_help=True)

ConfigArg = Annotated[Path, typer.Argument(help="YAML config, e.g. configs/sdi.yaml")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a key, e.g. --set optim.lr=0.0005 (repeatable)"),
]


@config_app.command("show")
def show(config: ConfigArg, overrides: SetOpt = None) -> None:
    """Print the fully resolved config (defaults, file and --set overrides merged)."""
    with user_errors():
        cfg = load_config(config, overrides)
    console.print(Syntax(dump_config(cfg), "yaml", theme="ansi_dark", background_color="default"))
