"""Adapters around the frame source: RTSP cameras (GStreamer child process) and video files.

``RtspCameraServer`` starts :mod:`services.simulator.rtsp_server` under the system python
(where ``gi`` lives) with one pipe per camera and writes raw BGR frames into the pipes (or,
for cameras served from pre-encoded clips, H.264 access units: see
:mod:`services.simulator.clips`).
``run_realtime`` paces a :class:`FrameSource` against the wall clock and hands each tick to
callbacks (frames to the server, ground truth to Kafka). ``write_videos`` renders a scenario
to one MP4 per camera plus label and ground-truth JSONL files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Sequence
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Protocol

import cv2
import numpy as np

from services.simulator.frames import FrameSource, SimTick

log = logging.getLogger(__name__)

SYSTEM_PYTHON = os.environ.get("DEPOTWATCH_SIM_GST_PYTHON", "/usr/bin/python3")
"""Interpreter with PyGObject and GstRtspServer (Debian: python3-gi, gir1.2-gst-rtsp-server-1.0)."""


class StreamSpec(Protocol):
    """What the RTSP server needs of a camera (a facility :class:`Camera` is one)."""

    @property
    def id(self) -> str: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def fps(self) -> float: ...


class RtspServerError(RuntimeError):
    """The GStreamer RTSP child could not start; the message says what to install or change."""


class RtspCameraServer:
    """GStreamer RTSP server child process fed with raw frames, one pipe per camera; the
    cameras in ``encoded`` are fed H.264 access units instead (:meth:`push_encoded`)."""

    def __init__(
        self,
        cameras: Sequence[StreamSpec],
        host: str = "127.0.0.1",
        port: int = 8554,
        python: str = SYSTEM_PYTHON,
        start_timeout_s: float = 20.0,
        encoded: Collection[str] = (),
    ) -> None:
        self.cameras = {c.id: c for c in cameras}
        unknown = sorted(set(encoded) - set(self.cameras))
        if unknown:
            raise ValueError(f"encoded cameras {unknown} are not among {sorted(self.cameras)}")
        self.encoded = frozenset(encoded)
        self.host = host
        self.requested_port = port
        self.python = python
        self.start_timeout_s = start_timeout_s
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pipes: dict[str, int] = {}
        self._stderr: list[str] = []

    def url(self, camera_id: str) -> str:
        """RTSP URL of a camera (after :meth:`start`)."""
        return f"rtsp://{self.host}:{self.port}/{camera_id}"

    def start(self) -> RtspCameraServer:
        """Start the child and wait until it listens."""
        if not Path(self.python).exists():
            raise RtspServerError(
                f"{self.python} not found; install Debian python3-gi and "
                "gir1.2-gst-rtsp-server-1.0 or set DEPOTWATCH_SIM_GST_PYTHON"
            )
        script = Path(__file__).with_name("rtsp_server.py")
        args = [self.python, str(script), "--host", self.host, "--port", str(self.requested_port)]
        read_fds = []
        for cam in self.cameras.values():
            r, w = os.pipe()
            read_fds.append(r)
            self._pipes[cam.id] = w
            fps = Fraction(cam.fps).limit_denominator(1000)
            args += [
                "--camera",
                f"{cam.id}:{cam.width}:{cam.height}:{fps.numerator}/{fps.denominator}:{r}"
                + (":h264" if cam.id in self.encoded else ""),
            ]
        self._proc = subprocess.Popen(
            args,
            pass_fds=read_fds,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": ""},
            start_new_session=True,
        )
        for r in read_fds:
            os.close(r)
        assert self._proc.stdout is not None
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        ready: list[str] = []
        reader = threading.Thread(
            target=lambda: ready.append(self._proc.stdout.readline().decode()),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        reader.join(self.start_timeout_s)
        line = ready[0].strip() if ready else ""
        if not line.startswith("READY"):
            self.stop()
            detail = " ".join(self._stderr[-3:]).strip() or "no output"
            raise RtspServerError(
                f"GStreamer RTSP server did not start within {self.start_timeout_s:.0f}s "
                f"({detail}); check the port and the GStreamer packages (FINDINGS.md)"
            )
        self.port = int(line.split()[1])
        log.info("rtsp server ready", extra={"port": self.port, "cameras": list(self.cameras)})
        return self

    def _drain_stderr(self) -> None:
        assert self._proc is not None
        assert self._proc.stderr is not None
        for raw in self._proc.stderr:
            text = raw.decode(errors="replace").rstrip()
            self._stderr.append(text)
            del self._stderr[:-50]
            log.debug("rtsp server: %s", text)

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs (for CPU accounting)."""
        return self._proc.pid if self._proc is not None else None

    def push_encoded(self, camera_id: str, unit: bytes) -> None:
        """Send one H.264 access unit (Annex B, SPS/PPS before each keyframe) to the stream of
        a camera served pre-encoded."""
        if camera_id not in self.encoded:
            raise ValueError(f"{camera_id} is served from raw frames; use push()")
        if not self.alive:
            raise RtspServerError("the GStreamer RTSP server exited; see the log for its error")
        _write_all(self._pipes[camera_id], len(unit).to_bytes(4, "big") + unit)

    def push(self, camera_id: str, image: np.ndarray) -> None:
        """Send one BGR frame of the camera's size to its stream."""
        if camera_id in self.encoded:
            raise ValueError(f"{camera_id} is served pre-encoded; use push_encoded()")
        cam = self.cameras[camera_id]
        if image.shape != (cam.height, cam.width, 3):
            raise ValueError(
                f"frame for {camera_id} is {image.shape}, expected {(cam.height, cam.width, 3)}"
            )
        if not self.alive:
            raise RtspServerError("the GStreamer RTSP server exited; see the log for its error")
        _write_all(self._pipes[camera_id], np.ascontiguousarray(image).tobytes())

    @property
    def alive(self) -> bool:
        """Whether the child is running."""
        return self._proc is not None and self._proc.poll() is None

    def terminate(self) -> None:
        """SIGTERM the child without closing the pipes (a writer blocked on a full pipe then
        gets a broken pipe); :meth:`stop` still has to be called."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()

    def stop(self, timeout: float = 10.0) -> None:
        """Close the pipes (the child exits on EOF), then SIGTERM, then SIGKILL."""
        for fd in self._pipes.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._pipes.clear()
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.wait(timeout / 2)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout / 2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> RtspCameraServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to a pipe (a write may take only part of a large buffer)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def run_realtime(
    source: FrameSource,
    on_tick: Callable[[SimTick], None],
    should_stop: Callable[[], bool],
    speed: float = 1.0,
    loop: bool = False,
    sleep: Callable[[float], object] = time.sleep,
) -> int:
    """Advance the scenario against the wall clock (``speed`` x real time); returns ticks run.

    When rendering falls behind, ticks are not skipped (ground truth stays complete); the
    lag is logged so an operator can lower the speed or the camera count.
    """
    if speed <= 0:
        raise ValueError("speed must be positive, e.g. 1.0 for real time")
    done = 0
    while True:
        started = time.monotonic()
        for tick in range(source.ticks):
            if should_stop():
                return done
            due = started + tick * source.tick_s / speed
            wait = due - time.monotonic()
            if wait > 0:
                sleep(wait)
            elif wait < -5 * source.tick_s and tick % 20 == 0:
                log.warning("simulator behind real time", extra={"lag_s": round(-wait, 2)})
            on_tick(source.tick(tick))
            done += 1
        if not loop:
            return done


def write_videos(source: FrameSource, out: Path, max_ticks: int | None = None) -> dict[str, Path]:
    """Render to ``out``: ``<camera>.mp4`` (MPEG-4), ``<camera>.labels.jsonl``, ground truth.

    A camera that is down in the scenario gets black frames (marked ``"down": true``), so the
    video timeline keeps the camera's fps.
    """
    out.mkdir(parents=True, exist_ok=True)
    writers: dict[str, cv2.VideoWriter] = {}
    label_files = {}
    paths: dict[str, Path] = {}
    for cam in source.cameras:
        path = out / f"{cam.id}.mp4"
        writer = cv2.VideoWriter(
            str(path), cv2.VideoWriter.fourcc(*"mp4v"), cam.fps, (cam.width, cam.height)
        )
        if not writer.isOpened():
            raise OSError(f"cannot write {path}; check the directory is writable")
        writers[cam.id] = writer
        paths[cam.id] = path
        label_files[cam.id] = (out / f"{cam.id}.labels.jsonl").open("w")
    truth = (out / "ground_truth.jsonl").open("w")
    try:
        ticks = source.ticks if max_ticks is None else min(max_ticks, source.ticks)
        for tick in range(ticks):
            sim_tick = source.tick(tick)
            truth.write(sim_tick.ground_truth.model_dump_json() + "\n")
            at = sim_tick.state.at.isoformat()
            for cam in source.cameras:
                if not source.due(cam.fps, tick):
                    continue
                frame = sim_tick.frames.get(cam.id)
                if frame is None:
                    writers[cam.id].write(np.zeros((cam.height, cam.width, 3), np.uint8))
                    record: dict[str, object] = {"tick": tick, "at": at, "down": True, "labels": []}
                else:
                    writers[cam.id].write(frame.image)
                    record = {
                        "tick": tick,
                        "at": at,
                        "down": False,
                        "labels": [lb.as_dict() for lb in frame.labels],
                    }
                label_files[cam.id].write(json.dumps(record) + "\n")
    finally:
        for w in writers.values():
            w.release()
        for f in label_files.values():
            f.close()
        truth.close()
    return paths
