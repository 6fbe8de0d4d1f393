"""`pipseg train`: parse options, run `pipseg.engine.train`, show progress and a summary."""

from __future__ import annotations

import os
import shlex
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn
from rich.table import Table

from pipseg.cli._common import ConfigArg, SetOpt, console, err_console, fail, user_errors

# `--resume [PATH]`: Typer has no option with an optional value, so PATH is an optional second
# argument that only --resume may use (`pipseg train CONFIG --resume runs/x/last.pt` reads right).
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue the run: from OUT_DIR/last.pt, or from PATH if given.")
]
PathArg = Annotated[
    Path | None, typer.Argument(metavar="PATH", help="Checkpoint for --resume (default OUT_DIR/last.pt)")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite a run already in runtime.out_dir.")]


def _fmt_time(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _val_text(event: dict[str, Any]) -> str:
    split, scored, unscored = event["val_split"], event["val_images"], event.get("val_without_masks", 0)
    if not event.get("validation", scored > 0):
        return (
            f"no validation: none of the {unscored} images of {split} has a ground-truth mask "
            "(best.pt is not written; last.pt is)"
        )
    without = f", {unscored} without masks not scored" if unscored else ""
    return f"val {split} ({scored} images, gt{without})"


def _header_lines(event: dict[str, Any]) -> list[str]:
    """The run header: what trains on what, from which weights, where to."""
    init = event["init"]
    init_text = (
        "from scratch" if init["kind"] == "none"
        else f"{escape(init['file'])} (sha256 {init['sha256'][:12]}…)" if init.get("file")
        else init["kind"]
    )  # fmt: skip
    lines = [
        f"[bold]pipseg train[/] {event['model']} · loss {event['loss']} · labels "
        f"[bold]{event['label_source']}[/] ({event['train_images']} images of "
        f"{event['train_split']}) · {_val_text(event)}",
        f"init {init_text} · device {event['device']} x{event['world_size']} · amp {event['amp']}",
        f"effective batch {event['batch_size']} = {event['micro_batch']} x accumulate "
        f"{event['accumulate']} x {event['world_size']} process(es) · lr {event['lr']:g} · "
        f"{event['iters']} iterations (from {event['start_iteration']}) → {event['out_dir']}",
    ]
    if init.get("classifier"):
        lines.insert(2, f"init: {init['classifier']}")
    return lines


class _Display:
    """Rich output for the progress events of `pipseg.engine.train` (rank 0 only)."""

    def __init__(self, progress: Progress) -> None:
        self.progress, self.task = progress, None

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        out = self.progress.console
        if kind == "start":
            for line in _header_lines(event):
                out.print(line, highlight=False)
            self.task = self.progress.add_task(
                "train", total=event["iters"], completed=event["start_iteration"],
                loss="-", lr="-", ips="-", eta="-",
            )  # fmt: skip
        elif kind == "iter":
            self.progress.update(self.task, completed=event["iteration"])
        elif kind == "log":
            parts = f" (box {event['box']:.3f}, pix {event['pixel']:.3f})" if out.width >= 100 else ""
            self.progress.update(
                self.task,
                loss=f"{event['loss']:.3f}{parts}",
                lr=f"{event['lr']:.1e}", ips=f"{event['images_per_s']:.1f}", eta=_fmt_time(event["eta_s"]),
            )  # fmt: skip
        elif kind == "val":
            out.print(
                f"iteration {event['iteration']}: val mIoU {100 * event['miou']:.2f} "
                f"(best {100 * event['best_miou']:.2f}), pixel acc {100 * event['pixel_accuracy']:.2f}"
            )


def _short_list(names: list[str], shown: int = 4) -> str:
    return f"{len(names)} ({', '.join(names[:shown])}{', ...' if len(names) > shown else ''})"


def _summary_table(s: dict[str, Any]) -> Table:
    table = Table(title="pipseg train: summary", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("iterations", f"{s['iteration']} / {s['iters']}" + ("" if s["finished"] else " (stopped early)")),
        ("classes", _short_list(s.get("classes") or [])),
        ("labels", f"{s['label_source']} ({s['train_images']} images)"),
        ("best val mIoU", f"{100 * s['best_miou']:.2f}" if s["best_miou"] is not None else "-"),
        ("last val mIoU", f"{100 * s['metrics']['miou']:.2f}" if s["metrics"] else "-"),
    ]
    if "final_loss" in s:
        f = s["final_loss"]
        rows.append(("final loss", f"{f['loss']:.4f} (box {f['box']:.4f}, pixel {f['pixel']:.4f})"))
    if "images_per_s" in s:
        rows.append(("throughput", f"{s['images_per_s']:.1f} images/s"))
    rows += [("wall time", _fmt_time(s["wall_time_s"])), ("outputs", s["out_dir"])]
    for key, value in rows:
        table.add_row(key, value)
    return table


def progress_columns() -> tuple[ProgressColumn, ...]:
    """The training bar: iteration, bar, loss, lr, throughput, ETA; 75 columns at most when the
    loss parts are left out (terminals narrower than 100 columns), so it fits 80."""
    return (
        TextColumn("{task.completed}/{task.total}"), BarColumn(bar_width=10),
        TextColumn("loss {task.fields[loss]} · lr {task.fields[lr]} · {task.fields[ips]} img/s · ETA {task.fields[eta]}"),
    )  # fmt: skip


def _resume_hint(config: Path, overrides: list[str] | None) -> str:
    sets = "".join(f" --set {shlex.quote(o)}" for o in overrides or [])
    launcher = " (with the same torchrun options)" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    return f"`pipseg train {shlex.quote(str(config))}{sets} --resume`{launcher}"


def train(
    config: ConfigArg,
    checkpoint: PathArg = None,
    overrides: SetOpt = None,
    resume: ResumeOpt = None,
    force: ForceOpt = False,
) -> None:
    """Train a model from a config (PIP recipe); --resume [PATH] continues a run; torchrun-ready.

    Ctrl-C stops after the current iteration with a checkpoint there (exit code 130); a second
    Ctrl-C stops at once. --resume continues from the checkpoint.
    """
    from pipseg.config import load_config
    from pipseg.engine import train as run_training

    is_main = int(os.environ.get("RANK", "0")) == 0
    with user_errors():
        cfg = load_config(config, overrides)
        if checkpoint is not None and not resume:
            raise fail(f"{checkpoint}: a checkpoint path is only used with --resume; add --resume")
        resume_arg: Path | bool = (checkpoint or True) if resume else False
        try:
            with Progress(*progress_columns(), console=console, disable=not is_main) as progress:
                result = run_training(cfg, resume=resume_arg, force=force, progress=_Display(progress))
        except KeyboardInterrupt:  # a second Ctrl-C: stop at once
            raise fail(
                f"interrupted; continue from the last checkpoint with {_resume_hint(config, overrides)}",
                code=130,
            ) from None
    if is_main:
        console.print(_summary_table(result.summary))
    if result.interrupted:
        if is_main:
            err_console.print(
                f"[yellow]stopped:[/] {result.interrupted} at iteration {result.iteration}; saved "
                f"{escape(str(result.last_checkpoint))}; continue with {escape(_resume_hint(config, overrides))}",
                highlight=False, soft_wrap=True,
            )  # fmt: skip
        raise typer.Exit(code=128 + signal.Signals[result.interrupted].value)
