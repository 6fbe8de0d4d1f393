"""The `pipseg` command line: each command parses options, calls the library and prints.

Commands are imported when they run (or when their own ``--help`` is asked for), so
``pipseg --version`` and ``pipseg --help`` start in a fraction of a second without torch. The
one-line summaries of ``pipseg --help`` are therefore kept here, in `COMMANDS`, beside the module
and function of each command (as pip does); a test keeps them equal to the commands' docstrings.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from typer.main import get_command, get_group

from pipseg import __version__
from pipseg.cli._common import console
from pipseg.cli._help import PlainCommand, PlainGroup


@dataclass(frozen=True)
class CommandEntry:
    """Where a command lives (``pipseg.cli.<module>``, attribute ``attr``) and its summary."""

    module: str
    attr: str
    summary: str

    def load(self, name: str) -> Any:
        """The click command: a Typer app as a group of commands, a function as one command."""
        target = getattr(importlib.import_module(f"pipseg.cli.{self.module}"), self.attr)
        if isinstance(target, typer.Typer):
            return get_group(target)
        single = typer.Typer(add_completion=False)
        single.command(name, cls=PlainCommand)(target)
        return get_command(single)


COMMANDS: dict[str, CommandEntry] = {
    "download": CommandEntry(
        "download_cmd", "download", "Fetch datasets and ImageNet weights (resumable, verified)."
    ),
    "prepare": CommandEntry(
        "prepare_cmd", "prepare",
        "Check a box-annotated dataset and build splits, pseudo labels and the manifest training reads.",
    ),
    "train": CommandEntry(
        "train_cmd", "train",
        "Train a model from a config (PIP recipe); --resume [PATH] continues a run; torchrun-ready.",
    ),
    "predict": CommandEntry(
        "predict_cmd", "predict", "Predict segmentation maps for images (palette PNGs in --out)."
    ),
    "crf": CommandEntry(
        "crf_cmd", "crf", "Refine saved probabilities with DenseCRF (resumable, all cores)."
    ),
    "eval": CommandEntry(
        "eval_cmd", "eval_", "Score predictions: CONFIG --checkpoint CKPT [--crf], or --pred DIR --gt DIR."
    ),
    "export": CommandEntry(
        "export_cmd", "export",
        "Export a checkpoint to ONNX or TorchScript (input: RGB 0..255, output: class probabilities).",
    ),
    "demo": CommandEntry(
        "demo_cmd", "demo",
        "Run the whole pipeline on generated data: pseudo labels, PIP training, eval, contact sheet.",
    ),
    "runs": CommandEntry(
        "runs_cmd", "runs",
        "Compare training runs: a table (label source, loss, lambda, iterations, val mIoU, wall time) and val curves.",
    ),
    "browse": CommandEntry(
        "browse_cmd", "browse",
        "Contact sheets of a prepared dataset: images with their boxes, every pseudo-label source, ground truth.",
    ),
    "refine": CommandEntry("refine_cmd", "refine", "Self-training rounds: train, relabel in the boxes (model + DenseCRF), train again."),
    "config": CommandEntry("config_cmd", "config_app", "Inspect configs."),
}  # fmt: skip


class LazyGroup(PlainGroup):
    """The root command: a command's module is imported only when that command is used."""

    _listing = False  # while `pipseg --help` lists the commands: summaries only, no imports

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # What `pipseg --help` lists and typo suggestions draw on; never run.
        self.commands = {name: PlainCommand(name, help=e.summary) for name, e in COMMANDS.items()}

    def get_command(self, ctx: typer.Context, cmd_name: str) -> Any:
        if self._listing or cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        return COMMANDS[cmd_name].load(cmd_name)

    def format_help(self, ctx: typer.Context, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(
    name="pipseg",
    cls=LazyGroup,
    help="Box-supervised semantic segmentation with PIP (pixel prior + box tightness).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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
