"""`run_tasks`: the one process pool, and its one fallback (serial work, one warning line)."""

from __future__ import annotations

import os
import warnings
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool

import pytest

import pipseg.parallel
from pipseg.parallel import run_tasks


def square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("task three is bad")
    return x


class BrokenPool:
    """A pool that cannot start, as in a sandbox without POSIX semaphores."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        raise PermissionError("no semaphores in this sandbox")


class DyingPool:
    """A pool that runs two tasks and then loses a worker (e.g. to the OOM killer)."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        self.submitted = 0

    def __enter__(self) -> DyingPool:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, fn, task):  # noqa: ANN001, ANN201
        future: Future = Future()
        if self.submitted < 2:
            future.set_result(fn(task))
        else:
            future.set_exception(BrokenProcessPool("a worker died"))
        self.submitted += 1
        return future


def test_pool_runs_every_task_on_workers() -> None:
    tasks = list(range(12))
    results = dict(run_tasks(square_and_pid, tasks, workers=2))
    assert sorted(results) == tasks
    assert [results[i][0] for i in tasks] == [x * x for x in tasks]
    assert all(pid != os.getpid() for _, pid in results.values()), "work ran in worker processes"


def test_one_worker_or_one_task_runs_inline() -> None:
    calls = []
    assert [r for _, (r, _) in run_tasks(square_and_pid, [5], workers=4, initializer=lambda: calls.append(1))] == [25]
    inline = dict(run_tasks(square_and_pid, [1, 2, 3], workers=1))
    assert {pid for _, pid in inline.values()} == {os.getpid()} and calls == [1]
    assert list(run_tasks(square_and_pid, [], workers=3)) == []


def test_pool_that_cannot_start_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipseg.parallel, "ProcessPoolExecutor", BrokenPool)
    warned: list[str] = []
    results = dict(run_tasks(square_and_pid, list(range(5)), workers=3, on_warning=warned.append))
    assert {i: r for i, (r, _) in results.items()} == {i: i * i for i in range(5)}
    assert {pid for _, pid in results.values()} == {os.getpid()}
    assert len(warned) == 1 and "\n" not in warned[0]
    assert "PermissionError" in warned[0] and "no semaphores" in warned[0] and "5 tasks" in warned[0]

    with pytest.warns(RuntimeWarning) as record:  # without on_warning: one warnings.warn
        assert len(list(run_tasks(square_and_pid, list(range(4)), workers=2))) == 4
    assert len(record) == 1 and "no semaphores" in str(record[0].message)


def test_pool_that_breaks_mid_run_finishes_the_rest_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipseg.parallel, "ProcessPoolExecutor", DyingPool)
    monkeypatch.setattr(pipseg.parallel, "as_completed", list)  # completion = submission order
    warned: list[str] = []
    results = list(run_tasks(square_and_pid, list(range(6)), workers=2, on_warning=warned.append))
    assert sorted(i for i, _ in results) == list(range(6)), "every task exactly once"
    assert {i: r for i, (r, _) in results} == {i: i * i for i in range(6)}
    assert len(warned) == 1 and "remaining 4 tasks" in warned[0]


def test_task_errors_are_not_pool_failures() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the task's own error comes through
        for workers in (1, 2):
            with pytest.raises(ValueError, match="task three"):
                list(run_tasks(fail_on_three, list(range(6)), workers=workers))
