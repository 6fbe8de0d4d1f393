"""One way to run independent tasks on worker processes, with one fallback.

Every process pool in pipseg goes through `run_tasks`: workers start with ``fork`` where the
platform has it, results come back with their task's index, and a pool that cannot start (a
sandbox without semaphores, a platform without ``fork``) or breaks mid-run (a worker killed by
the OOM killer) never ends the job: the unfinished tasks run in this process and the caller
hears one warning line.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

# What a pool that cannot start or dies raises; the task's own exceptions are not among them.
_POOL_FAILURES = (OSError, PermissionError, NotImplementedError, BrokenProcessPool)


def default_workers() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def pool_context() -> multiprocessing.context.BaseContext:
    """``fork`` where available: workers start in milliseconds instead of re-importing torch and the
    caller's main module (spawn takes seconds per worker). Workers never touch torch or CUDA."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


def run_tasks(
    fn: Callable[[T], R],
    tasks: Sequence[T],
    *,
    workers: int | None = None,
    initializer: Callable[[], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> Iterator[tuple[int, R]]:
    """Yield ``(index, fn(tasks[index]))`` for every task, in completion order.

    ``fn`` must be picklable (a module-level function) and should return its failures rather than
    raise them; an exception it raises ends the iteration. Uses ``workers`` processes (default:
    all cores; one process, or a single task, runs inline). When the pool cannot start or breaks,
    the remaining tasks run here and ``on_warning`` (default: `warnings.warn`) gets one line.
    """
    n_workers = min(max(1, workers or default_workers()), len(tasks))
    remaining = set(range(len(tasks)))
    if n_workers > 1:
        try:
            yield from _pooled(fn, tasks, n_workers, initializer, remaining)
        except _POOL_FAILURES as e:
            message = (
                f"could not use {n_workers} worker processes ({e.__class__.__name__}: {e}); "
                f"running the remaining {len(remaining)} tasks in one process"
            )
            (on_warning or _warn)(message)
    elif initializer is not None and remaining:
        initializer()
    for index in sorted(remaining):
        yield index, fn(tasks[index])


def _pooled(
    fn: Callable[[T], R],
    tasks: Sequence[T],
    n_workers: int,
    initializer: Callable[[], None] | None,
    remaining: set[int],
) -> Iterator[tuple[int, R]]:
    with ProcessPoolExecutor(n_workers, mp_context=pool_context(), initializer=initializer) as pool:
        futures = {pool.submit(fn, task): index for index, task in enumerate(tasks)}
        for future in as_completed(futures):
            index = futures[future]
            result = future.result()
            remaining.discard(index)
            yield index, result


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)
