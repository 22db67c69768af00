"""Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM (a cluster's preemption notice).

The first signal asks the training loop to stop after the step in progress; the loop then
writes a resumable checkpoint and the process exits with 128 + the signal number (130 for
SIGINT, 143 for SIGTERM), as a shell reports a signal. A second SIGINT stops at once, with the
previous checkpoint intact.
"""

from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Installs the handlers for the duration of a ``with`` block (main thread only)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signum = signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


class Interrupted(SystemExit):
    """Raised by ``train.py`` after the resumable checkpoint of an interrupted run is written;
    its code is the shell's 128 + signal number."""
