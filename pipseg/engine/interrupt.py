"""Ctrl-C during training: stop at the next step boundary with a checkpoint, on every rank alike.

SIGINT (Ctrl-C) and SIGTERM (``kill``, a scheduler, torchrun passing on a Ctrl-C) only set a
flag; the loop asks :meth:`StopSignals.requested` once per iteration, which votes over the ranks,
so every rank stops after the same iteration and the checkpoint it writes is consistent. A second
signal of the same kind acts at once as it would without pipseg (Ctrl-C raises KeyboardInterrupt).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

from pipseg.engine.distributed import DistInfo, RankVote

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Context manager: while inside, SIGINT / SIGTERM ask the run to stop (see the module)."""

    def __init__(self, info: DistInfo) -> None:
        self.vote = RankVote(info)  # on every rank, even where no handler can be installed
        self.received = 0  # the signal number, 0 = none
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = self.received or signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # the next one acts at once

    def requested(self) -> str | None:
        """The name of the signal that asks to stop (on any rank), or None; call it on every rank
        at the same step boundary (it is a collective)."""
        signum = self.vote.max(self.received)
        return signal.Signals(signum).name if signum else None
