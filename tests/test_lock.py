"""The run-folder lock: a live run refuses a second one; a killed run's lock is taken over."""

import subprocess
import sys
import textwrap
import time

import pytest

from pipseg.engine.lock import LOCK_NAME, RunLock
from pipseg.errors import PipsegError

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pipseg.engine.lock import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(60)
    """
)


def _start_holder(out_dir):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_run_is_refused_naming_the_first(tmp_path):
    proc = _start_holder(tmp_path)
    try:
        with pytest.raises(PipsegError, match=rf"runtime.out_dir .*pid {proc.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_run_is_taken_over(tmp_path):
    proc = _start_holder(tmp_path)
    proc.kill()
    proc.wait()
    assert (tmp_path / LOCK_NAME).exists()  # left behind by the killed run
    with RunLock(tmp_path) as lock:
        assert lock.took_over is not None and lock.took_over["pid"] == proc.pid
    assert not (tmp_path / LOCK_NAME).exists()


def test_release_then_reacquire(tmp_path):
    lock = RunLock(tmp_path).acquire()
    lock.release()
    lock.release()  # idempotent
    with RunLock(tmp_path):
        time.sleep(0)
