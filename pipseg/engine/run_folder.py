"""What ``runtime.out_dir`` may hold when a run starts: nothing, a partial run to resume (with
``--resume``), or a run to overwrite (with ``--force``); never silently clobbered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipseg.config import Config, dump_config
from pipseg.engine import runlog
from pipseg.engine.checkpoint import BEST, LAST, read_training_checkpoint, run_progress
from pipseg.errors import PipsegError
from pipseg.io import atomic_write_text


def resume_source(out_dir: Path, resume: Path | bool | None, force: bool) -> Path | None:
    """The checkpoint to resume from, or None for a fresh run; refuses to clobber a run."""
    if resume:
        path = out_dir / LAST if resume is True else Path(resume).expanduser()
        if not path.is_file():
            raise PipsegError(f"{path}: no checkpoint to resume from; start without --resume")
        return path
    if force:
        return None
    progress = run_progress(out_dir)
    if progress is None:
        return None
    done, iters = progress
    if done >= iters:
        raise PipsegError(
            f"{out_dir}: holds a finished run ({done} iterations); use --force to overwrite it "
            "or set runtime.out_dir to another folder"
        )
    raise PipsegError(
        f"{out_dir}: holds a partial run (iteration {done} of {iters}); use --resume to continue "
        "it or --force to start over"
    )


def resume_checkpoint(
    out_dir: Path, resume: Path | bool | None, force: bool, iters: int
) -> tuple[Path, dict[str, Any]] | None:
    """``(path, checkpoint)`` to resume from, or None for a fresh run (see :func:`resume_source`);
    a checkpoint that already reached ``iters`` is an error."""
    path = resume_source(out_dir, resume, force)
    if path is None:
        return None
    ckpt = read_training_checkpoint(path)
    if ckpt["iteration"] >= iters:
        raise PipsegError(
            f"{path}: the run already finished ({ckpt['iteration']} iterations); raise "
            "optim.iters to train further, or use --force without --resume to start over"
        )
    return path, ckpt


def clear_run(out_dir: Path) -> None:
    """Remove the files a previous run left (``--force``), so no stale best.pt survives."""
    for name in (LAST, BEST, runlog.LOG_NAME, runlog.CURVES_NAME, runlog.SUMMARY_NAME):
        (out_dir / name).unlink(missing_ok=True)


def open_run_folder(out_dir: Path, cfg: Config, resumed_at: int | None) -> None:
    """Ready ``out_dir`` (rank 0 only): a fresh run (``resumed_at`` None) clears what a previous
    one left; a resumed one drops the log records after its checkpoint. Writes config.yaml."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if resumed_at is None:
        clear_run(out_dir)
    else:
        runlog.truncate_log(out_dir / runlog.LOG_NAME, resumed_at)
    atomic_write_text(out_dir / runlog.CONFIG_NAME, dump_config(cfg))
