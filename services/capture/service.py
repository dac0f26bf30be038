"""The capture process: a reader thread (stream -> decimate) handing kept frames to a
:class:`~services.runtime.frame_outlet.FrameOutlet` (JPEG -> queue -> ZeroMQ), with a watchdog,
metrics and health.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client import Counter

from schemas.facility import Camera, redact_url
from services.capture.stream import StreamError, StreamReader
from services.runtime.backoff import Backoff
from services.runtime.capture_settings import CaptureSettings
from services.runtime.decimation import FrameDecimator
from services.runtime.frame_outlet import FrameOutlet
from services.runtime.shutdown import ShutdownSignal

log = logging.getLogger(__name__)

RECONNECTS = Counter(
    "depotwatch_capture_reconnects_total",
    "Stream (re)opens after a failure",
    ["camera_id", "reason"],
)


class CaptureService:
    """Captures one camera until shutdown is requested."""

    def __init__(
        self,
        camera: Camera,
        settings: CaptureSettings,
        shutdown: ShutdownSignal,
        source: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.camera = camera
        # Health, decimation and the watchdog reason read this clock (tests move it by hand);
        # the stream reader's read timeout stays on the wall clock.
        self.clock = clock
        self.settings = settings
        self.shutdown = shutdown
        self.source = source or camera.source
        self.outlet = FrameOutlet(camera, settings.queue_frames)
        self._last_frame = clock()
        self._cid = camera.id

    @property
    def reconnects(self) -> int:
        """Times the stream was reopened (or failed to open) since this service started."""
        return self.outlet.reconnects

    # -- health --------------------------------------------------------------------------
    def health(self) -> tuple[bool, str]:
        """Unhealthy when the camera delivered no frame for the watchdog period."""
        silent = self.clock() - self._last_frame
        if silent > self.settings.watchdog_s:
            return False, f"camera {self._cid}: no frame for {silent:.1f}s"
        return True, f"camera {self._cid}: last frame {silent:.1f}s ago"

    # -- threads -------------------------------------------------------------------------
    def run(self) -> None:
        """Capture until shutdown; returns after both threads stopped.

        Raises ValueError (one line) at once when the aggregator endpoint is malformed.
        """
        self.outlet.start(self.settings.aggregator_endpoint, self.settings.send_hwm)
        try:
            self._read_loop()
        finally:
            self.shutdown.request()
            self.outlet.stop()

    def _read_loop(self) -> None:
        s = self.settings
        # The read timeout IS the watchdog: a stream that yields nothing for watchdog_s is
        # closed and reopened, whether the server hung up or silently stopped sending.
        reader = StreamReader(self.source, s.open_timeout_s, s.watchdog_s, s.loop_files)
        decimator = FrameDecimator(self.camera.fps, s.decimation_tolerance)
        backoff = Backoff(s.backoff_initial_s, s.backoff_max_s)
        url = redact_url(self.source)
        first_open = True
        while not self.shutdown.requested:
            try:
                reader.open()
            except StreamError as exc:
                delay = backoff.next_delay()
                RECONNECTS.labels(self._cid, "open_failed").inc()
                self.outlet.reconnects += 1
                log.warning(
                    "stream open failed; retrying",
                    extra={"camera_id": self._cid, "reason": str(exc), "retry_in_s": delay},
                )
                self.shutdown.wait(delay)
                continue
            log.info(
                "stream opened" if first_open else "stream reopened",
                extra={"camera_id": self._cid, "source": url},
            )
            first_open = False
            decimator.reset()
            reason = self._read_frames(reader, decimator, backoff)
            reader.close()
            if reason is None:
                break
            delay = backoff.next_delay()
            RECONNECTS.labels(self._cid, reason[0]).inc()
            self.outlet.reconnects += 1
            log.warning(
                "reopening stream",
                extra={"camera_id": self._cid, "reason": reason[1], "retry_in_s": delay},
            )
            self.shutdown.wait(delay)
        reader.close()

    def _read_frames(
        self, reader: StreamReader, decimator: FrameDecimator, backoff: Backoff
    ) -> tuple[str, str] | None:
        """Read until the stream fails; returns (metric reason, log reason), None on shutdown."""
        watchdog = self.settings.watchdog_s
        opened = self.clock()
        got_frame = False
        while not self.shutdown.requested:
            grabbed = reader.grab()
            now = self.clock()
            if not grabbed:
                silent = now - (self._last_frame if got_frame else opened)
                if silent >= watchdog:
                    return "watchdog", f"no frame for {silent:.1f}s (watchdog {watchdog:.0f}s)"
                return "read_failed", "stream ended or read failed"
            if not got_frame:
                got_frame = True
                backoff.reset()
            self._last_frame = now
            self.outlet.read()
            if decimator.keep(now):
                # Only kept frames are converted to BGR (a 15 fps camera kept at 2 fps: 2 of 15).
                image = reader.retrieve()
                if image is None:
                    return "read_failed", "a grabbed frame could not be decoded"
                self.outlet.put(image)
        return None
