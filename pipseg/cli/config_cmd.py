"""`pipseg config show`: print the fully resolved config."""

from __future__ import annotations

import typer

from pipseg.cli._common import ConfigArg, SetOpt, console, user_errors
from pipseg.cli._help import PlainCommand, PlainGroup

config_app = typer.Typer(cls=PlainGroup, help="Inspect configs.", no_args_is_help=True)


@config_app.command("show", cls=PlainCommand)
def show(config: ConfigArg, overrides: SetOpt = None) -> None:
    """Print the fully resolved config (defaults, file and --set overrides merged)."""
    from rich.syntax import Syntax

    from pipseg.config import dump_config, load_config

    with user_errors():
        cfg = load_config(config, overrides)
    console.print(Syntax(dump_config(cfg), "yaml", theme="ansi_dark", background_color="default"))
