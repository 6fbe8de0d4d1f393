"""One live training run per output folder.

`RunLock` holds an exclusive ``flock`` on ``<out_dir>/.pipseg-run.lock`` for the whole run. The
kernel drops the lock when its process dies, however it dies, so a lock left by a killed run is
stale by construction and the next run takes it over; the file's text (pid, host, start time,
command) only serves to name the live run in the error.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO, Any

from pipseg.errors import PipsegError

LOCK_NAME = ".pipseg-run.lock"

try:
    import fcntl
except ImportError:  # Windows: no flock; fall back to checking the recorded pid
    fcntl = None  # type: ignore[assignment]


class RunLock:
    """Exclusive lock on a run folder; use as a context manager or call `acquire` / `release`."""

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.path = Path(out_dir) / LOCK_NAME
        self._file: IO[str] | None = None
        self.took_over: dict[str, Any] | None = None  # the stale holder's record, if any
        self._created_dir = False

    def acquire(self) -> RunLock:
        """Take the lock or raise `PipsegError` naming the live run that holds it."""
        self._created_dir = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the run
        previous = _read_record(self.path)
        if not _try_lock(handle, previous):
            handle.close()
            raise PipsegError(_busy_message(self.path, previous))
        self.took_over = previous or None
        handle.seek(0)
        handle.truncate()
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}  # fmt: skip
        handle.write(json.dumps(record))
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        """Drop the lock and remove the file (idempotent)."""
        if self._file is None:
            return
        try:
            self.path.unlink(missing_ok=True)
            if self._created_dir and not any(self.path.parent.iterdir()):
                self.path.parent.rmdir()  # a run that wrote nothing leaves no folder behind
        finally:
            if fcntl is not None:
                fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _try_lock(handle: IO[str], previous: dict[str, Any]) -> bool:
    if fcntl is not None:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    pid = previous.get("pid")
    return not (previous.get("host") == socket.gethostname() and isinstance(pid, int) and _alive(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _busy_message(path: Path, holder: dict[str, Any]) -> str:
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
    return (
        f"runtime.out_dir {path.parent}: another training run ({who}) is writing there; "
        "wait for it or stop it, or set another runtime.out_dir"
    )
