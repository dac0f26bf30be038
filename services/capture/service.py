"""The capture process: a reader thread (stream -> decimate -> JPEG -> queue) and a sender
thread (queue -> ZeroMQ), with a watchdog, metrics and health.

The reader never waits for the network and the sender never waits for the camera: they meet
in a small newest-wins :class:`FrameQueue`, so an absent or slow aggregator costs dropped
(and counted) frames, never memory or a stalled camera connection.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import cv2
import numpy as np
from prometheus_client import Counter, Gauge

from schemas.facility import Camera, redact_url
from services.capture.config import CaptureSettings
from services.capture.decimation import FrameDecimator, SequenceNumbers
from services.capture.stream import Image, StreamError, StreamReader
from services.runtime.backoff import Backoff
from services.runtime.frame_queue import FrameQueue
from services.runtime.frame_transport import FrameSender
from services.runtime.frame_wire import EncodedFrame, FrameHeader
from services.runtime.shutdown import ShutdownSignal

log = logging.getLogger(__name__)

FRAMES_READ = Counter(
    "depotwatch_capture_frames_read_total", "Frames decoded from the stream", ["camera_id"]
)
FRAMES_IN = Counter(
    "depotwatch_capture_frames_in_total", "Frames kept by decimation and encoded", ["camera_id"]
)
FRAMES_OUT = Counter(
    "depotwatch_capture_frames_out_total", "Frames sent to the aggregator", ["camera_id"]
)
FRAMES_DROPPED = Counter(
    "depotwatch_capture_frames_dropped_total",
    "Kept frames never sent (queue full while the aggregator was away or slow)",
    ["camera_id", "reason"],
)
RECONNECTS = Counter(
    "depotwatch_capture_reconnects_total",
    "Stream (re)opens after a failure",
    ["camera_id", "reason"],
)
QUEUE_DEPTH = Gauge("depotwatch_capture_queue_depth", "Frames waiting to be sent", ["camera_id"])
LAST_FRAME = Gauge(
    "depotwatch_capture_last_frame_timestamp_seconds",
    "Unix time of the last frame read",
    ["camera_id"],
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
        self.queue: FrameQueue[EncodedFrame] = FrameQueue(settings.queue_frames)
        self.sequence = SequenceNumbers()
        self._last_frame = clock()
        self._cid = camera.id
        self.reconnects = 0
        """Times the stream was reopened (or failed to open) since this service started."""
        for reason in ("queue_full", "shutdown"):
            FRAMES_DROPPED.labels(self._cid, reason)
        QUEUE_DEPTH.labels(self._cid).set(0)

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
        socket = FrameSender(self.settings.aggregator_endpoint, self.settings.send_hwm)
        sender = threading.Thread(
            target=self._send_loop, args=(socket,), name=f"send-{self._cid}", daemon=True
        )
        sender.start()
        try:
            self._read_loop()
        finally:
            self.shutdown.request()
            sender.join(timeout=5)

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
                self.reconnects += 1
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
            self.reconnects += 1
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
            image = reader.read()
            now = self.clock()
            if image is None:
                silent = now - (self._last_frame if got_frame else opened)
                if silent >= watchdog:
                    return "watchdog", f"no frame for {silent:.1f}s (watchdog {watchdog:.0f}s)"
                return "read_failed", "stream ended or read failed"
            if not got_frame:
                got_frame = True
                backoff.reset()
            self._last_frame = now
            FRAMES_READ.labels(self._cid).inc()
            LAST_FRAME.labels(self._cid).set(time.time())
            if not decimator.keep(now):
                continue
            frame = self._encode(image)
            if frame is None:
                continue
            FRAMES_IN.labels(self._cid).inc()
            dropped = self.queue.put(frame)
            if dropped:
                FRAMES_DROPPED.labels(self._cid, "queue_full").inc(len(dropped))
            QUEUE_DEPTH.labels(self._cid).set(len(self.queue))
        return None

    def _encode(self, image: Image) -> EncodedFrame | None:
        captured_at = datetime.now(UTC)
        cam = self.camera
        if image.shape[1] != cam.width or image.shape[0] != cam.height:
            # Calibration is in the configured resolution; keep pixels comparable.
            image = np.asarray(
                cv2.resize(image, (cam.width, cam.height), interpolation=cv2.INTER_AREA),
                dtype=np.uint8,
            )
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, cam.jpeg_quality])
        if not ok:
            log.error("JPEG encoding failed", extra={"camera_id": self._cid})
            return None
        header = FrameHeader(
            camera_id=cam.id,
            seq=self.sequence.take(),
            captured_at=captured_at,
            reconnects=self.reconnects,
            width=cam.width,
            height=cam.height,
        )
        return EncodedFrame(header=header, jpeg=buf.tobytes())

    def _send_loop(self, sender: FrameSender) -> None:
        try:
            while not self.shutdown.requested:
                frame = self.queue.get(timeout=0.2)
                if frame is None:
                    continue
                if sender.try_send(frame):
                    FRAMES_OUT.labels(self._cid).inc()
                else:
                    # Aggregator away or busy: keep the frame at the head and retry soon; the
                    # reader keeps filling the queue and the oldest frames fall out.
                    dropped = self.queue.put_front(frame)
                    if dropped:
                        FRAMES_DROPPED.labels(self._cid, "queue_full").inc(len(dropped))
                    self.shutdown.wait(0.02)
                QUEUE_DEPTH.labels(self._cid).set(len(self.queue))
        finally:
            self._flush(sender, deadline=time.monotonic() + 1.0)
            left = self.queue.drain()
            if left:
                FRAMES_DROPPED.labels(self._cid, "shutdown").inc(len(left))
            QUEUE_DEPTH.labels(self._cid).set(0)
            sender.close()

    def _flush(self, sender: FrameSender, deadline: float) -> None:
        # Shutdown: hand what is queued to a reachable aggregator, but never wait long.
        while time.monotonic() < deadline:
            frame = self.queue.get(timeout=0)
            if frame is None:
                return
            if sender.try_send(frame):
                FRAMES_OUT.labels(self._cid).inc()
            else:
                self.queue.put_front(frame)
                time.sleep(0.02)
