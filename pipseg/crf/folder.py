"""`pipseg crf`: DenseCRF over a folder of saved probabilities, resumable and on all cores.

No torch here: with ``fork`` the worker processes start in milliseconds and touch only numpy,
Pillow and pydensecrf.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from pipseg.crf import DenseCRF, load_probs
from pipseg.data.images import IMAGE_EXTENSIONS, read_image
from pipseg.data.labels import write_label
from pipseg.errors import PipsegError
from pipseg.parallel import default_workers, run_tasks


@dataclass
class CRFSummary:
    """What `crf_folder` did: counts, failures ``(id, message)`` and warnings (e.g. no pool)."""

    total: int = 0
    written: int = 0
    skipped: int = 0  # outputs that already existed
    failed: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    workers: int = 1  # processes that did the work


@dataclass(frozen=True)
class _Job:
    sample_id: str
    image: Path | None
    probs: Path
    out: Path


def crf_folder(
    images_dir: str | os.PathLike[str],
    probs_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    crf: DenseCRF,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    overwrite: bool = False,
    on_warning: Callable[[str], None] | None = None,
) -> CRFSummary:
    """Apply ``crf`` to every ``<id>.npz`` under ``probs_dir`` and write ``out_dir/<id>.png``.

    ``<id>`` may contain subfolders; the image is ``images_dir/<id>.<any image extension>``.
    Resumable: existing outputs are skipped unless ``overwrite``. Runs on ``workers`` processes
    (default: all cores); when a process pool cannot start, it runs in this process and says so
    in one line in ``summary.warnings`` (and through ``on_warning``). ``progress(done, total)``
    after each image.
    """
    images_dir, probs_dir, out_dir = Path(images_dir), Path(probs_dir), Path(out_dir)
    for name, folder in (("images", images_dir), ("probabilities", probs_dir)):
        if not folder.is_dir():
            raise PipsegError(f"{folder}: {name} folder not found")
    summary = CRFSummary()
    jobs = _jobs(images_dir, probs_dir, out_dir, overwrite, summary)
    summary.workers = min(max(1, workers or default_workers()), max(1, len(jobs)))

    def warn(message: str) -> None:
        summary.warnings.append(message)
        summary.workers = 1
        if on_warning is not None:
            on_warning(message)

    done = summary.skipped
    for _, (sample_id, error) in run_tasks(partial(_run_job, crf=crf), jobs, workers=summary.workers, on_warning=warn):
        if error is None:
            summary.written += 1
        else:
            summary.failed.append((sample_id, error))
        done += 1
        if progress is not None:
            progress(done, summary.total)
    return summary


def _jobs(images_dir: Path, probs_dir: Path, out_dir: Path, overwrite: bool, summary: CRFSummary) -> list[_Job]:
    """One job per ``.npz`` whose output is still missing (or every one with ``overwrite``);
    counts them all and the skipped ones into ``summary``."""
    images = _index_images(images_dir)
    jobs = []
    for npz in sorted(probs_dir.rglob("*.npz")):
        sample_id = npz.relative_to(probs_dir).with_suffix("").as_posix()
        out = out_dir / f"{sample_id}.png"
        summary.total += 1
        if out.exists() and not overwrite:
            summary.skipped += 1
        else:
            jobs.append(_Job(sample_id, images.get(sample_id), npz, out))
    return jobs


def _index_images(images_dir: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in sorted(images_dir.rglob("*")):
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            index.setdefault(path.relative_to(images_dir).with_suffix("").as_posix(), path)
    return index


def _run_job(job: _Job, crf: DenseCRF) -> tuple[str, str | None]:
    """One image: load, CRF, write. Returns ``(id, error message or None)``; never raises for data."""
    try:
        if job.image is None:
            raise PipsegError(f"{job.sample_id}: no image with this name in the images folder")
        image = read_image(job.image)
        probs = load_probs(job.probs)
        if probs.shape[1:] != image.shape[:2]:
            raise PipsegError(
                f"{job.probs}: probabilities are {probs.shape[2]}x{probs.shape[1]} but {job.image} "
                f"is {image.shape[1]}x{image.shape[0]}"
            )
        write_label(job.out, crf(image, probs))
    except (PipsegError, OSError, ValueError) as e:
        return job.sample_id, str(e)
    return job.sample_id, None
