"""DenseCRF post-processing (PIP.md section 4) and a resumable, parallel runner over saved probabilities.

No torch here: the folder runner's worker processes import only numpy, Pillow and pydensecrf.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipseg.config import CRFConfig
from pipseg.data.images import IMAGE_EXTENSIONS, read_image
from pipseg.data.labels import write_label
from pipseg.errors import PipsegError
from pipseg.io import atomic_write

PROBS_KEY = "probs"  # array name inside <id>.npz files written by `pipseg predict --save-probs`


_DEFAULTS = CRFConfig()


@dataclass(frozen=True)
class DenseCRF:
    """Fully connected CRF (Kraehenbuehl & Koltun) with DeepLab's defaults.

    ``crf(image, probs)`` returns class indices ``[H, W]`` uint8; `refine` returns the
    refined probabilities ``[C, H, W]`` float32.
    """

    # The defaults live in one place, `CRFConfig` (PIP.md section 4).
    iters: int = _DEFAULTS.iters
    gauss_sxy: float = _DEFAULTS.gauss_sxy
    gauss_weight: float = _DEFAULTS.gauss_weight
    bilateral_sxy: float = _DEFAULTS.bilateral_sxy
    bilateral_srgb: float = _DEFAULTS.bilateral_srgb
    bilateral_weight: float = _DEFAULTS.bilateral_weight
    clip: float = 1e-5  # floor of the probabilities before -log (unary energy)

    @classmethod
    def from_config(cls, cfg: CRFConfig) -> DenseCRF:
        """Build from a `pipseg.config.CRFConfig` (``cfg.crf``)."""
        return cls(**cfg.model_dump())

    def refine(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Mean-field inference: RGB uint8 ``[H, W, 3]`` + probabilities ``[C, H, W]`` -> ``[C, H, W]``."""
        import pydensecrf.densecrf as dcrf

        probs = np.asarray(probs)
        image = np.asarray(image)
        if probs.ndim != 3 or image.shape[:2] != probs.shape[1:] or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"CRF expects image [H, W, 3] and probs [C, H, W] of the same H, W; "
                f"got {image.shape} and {probs.shape}"
            )
        num_classes, height, width = probs.shape
        # pydensecrf wants C-contiguous float32 unaries and a C-contiguous, *writable* uint8 image
        # (its typed memoryviews reject read-only buffers such as arrays viewed from PIL images).
        unary = -np.log(np.clip(probs.astype(np.float32, copy=False), self.clip, 1.0))
        unary = np.ascontiguousarray(unary.reshape(num_classes, -1), dtype=np.float32)
        rgb = np.require(image.astype(np.uint8, copy=False), requirements=["C", "W"])
        crf = dcrf.DenseCRF2D(width, height, num_classes)
        crf.setUnaryEnergy(unary)
        crf.addPairwiseGaussian(sxy=self.gauss_sxy, compat=self.gauss_weight)
        crf.addPairwiseBilateral(
            sxy=self.bilateral_sxy, srgb=self.bilateral_srgb, rgbim=rgb, compat=self.bilateral_weight
        )
        q = crf.inference(self.iters)
        return np.asarray(q, dtype=np.float32).reshape(num_classes, height, width)

    def __call__(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Refined class indices ``[H, W]`` uint8."""
        return self.refine(image, probs).argmax(axis=0).astype(np.uint8)


def save_probs(path: str | os.PathLike[str], probs: np.ndarray) -> Path:
    """Write probabilities ``[C, H, W]`` as compressed float16 ``.npz`` (key ``probs``), atomically."""
    data = np.ascontiguousarray(probs, dtype=np.float16)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a path
            np.savez_compressed(f, **{PROBS_KEY: data})

    return atomic_write(path, write)


def load_probs(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a ``.npz`` written by `save_probs` as float32 ``[C, H, W]``."""
    try:
        with np.load(path) as npz:
            if PROBS_KEY not in npz.files:
                raise PipsegError(f"{path}: no '{PROBS_KEY}' array; write it with `pipseg predict --save-probs`")
            probs = npz[PROBS_KEY].astype(np.float32)
    except (OSError, ValueError, EOFError) as e:
        raise PipsegError(f"{path}: not a readable probabilities file ({e})") from None
    if probs.ndim != 3:
        raise PipsegError(f"{path}: probabilities must be [C, H, W], got shape {probs.shape}")
    return probs


# ---------------------------------------------------------------------------------------------
# Folder runner


@dataclass
class CRFSummary:
    """What `crf_folder` did: counts, failures ``(id, message)`` and warnings (e.g. no pool)."""

    total: int = 0
    written: int = 0
    skipped: int = 0  # outputs that already existed
    failed: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    workers: int = 1


@dataclass(frozen=True)
class _Job:
    sample_id: str
    image: Path | None
    probs: Path
    out: Path


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


def pool_context() -> multiprocessing.context.BaseContext:
    """``fork`` where available: workers start in milliseconds instead of re-importing torch and the
    caller's main module (spawn takes seconds per worker). Workers never touch torch or CUDA."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


def default_workers() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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
    in ``summary.warnings`` (and through ``on_warning``). ``progress(done, total)`` after each image.
    """
    images_dir, probs_dir, out_dir = Path(images_dir), Path(probs_dir), Path(out_dir)
    for name, folder in (("images", images_dir), ("probabilities", probs_dir)):
        if not folder.is_dir():
            raise PipsegError(f"{folder}: {name} folder not found")
    images = _index_images(images_dir)
    summary = CRFSummary(workers=max(1, workers or default_workers()))
    jobs: list[_Job] = []
    for npz in sorted(probs_dir.rglob("*.npz")):
        sample_id = npz.relative_to(probs_dir).with_suffix("").as_posix()
        out = out_dir / f"{sample_id}.png"
        summary.total += 1
        if out.exists() and not overwrite:
            summary.skipped += 1
            continue
        jobs.append(_Job(sample_id, images.get(sample_id), npz, out))

    done = summary.skipped

    def record(result: tuple[str, str | None]) -> None:
        nonlocal done
        sample_id, error = result
        if error is None:
            summary.written += 1
        else:
            summary.failed.append((sample_id, error))
        done += 1
        if progress is not None:
            progress(done, summary.total)

    remaining = {job.sample_id: job for job in jobs}
    if summary.workers > 1 and len(jobs) > 1:
        try:
            ctx = pool_context()
            with ProcessPoolExecutor(min(summary.workers, len(jobs)), mp_context=ctx) as pool:
                futures = [pool.submit(_run_job, job, crf) for job in jobs]
                for future in as_completed(futures):
                    result = future.result()
                    remaining.pop(result[0])
                    record(result)
        except (OSError, PermissionError, BrokenProcessPool) as e:
            message = f"could not use {summary.workers} worker processes ({e.__class__.__name__}: {e}); ran in one process"
            summary.warnings.append(message)
            summary.workers = 1
            if on_warning is not None:
                on_warning(message)
    else:
        summary.workers = 1
    for job in list(remaining.values()):
        record(_run_job(job, crf))
    return summary
