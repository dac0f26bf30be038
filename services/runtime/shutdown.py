"""Graceful shutdown: SIGTERM and SIGINT set an event that service loops watch."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)


class ShutdownSignal:
    """An event set by SIGTERM/SIGINT; loops poll ``requested`` or ``wait(timeout)``."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def install(self) -> ShutdownSignal:
        """Route SIGTERM and SIGINT here (main thread only); returns self."""
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._event.is_set():
            # A second Ctrl-C means "now": let the default handler end the process.
            signal.signal(signum, signal.SIG_DFL)
        log.info("shutdown requested", extra={"signal": signal.Signals(signum).name})
        self._event.set()

    def request(self) -> None:
        """Ask for shutdown from code (tests, fatal errors)."""
        self._event.set()

    @property
    def requested(self) -> bool:
        """Whether shutdown was asked for."""
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until shutdown is asked for or ``timeout`` passes; True if asked for."""
        return self._event.wait(timeout)
