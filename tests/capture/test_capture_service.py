"""The capture process's loop on a real video file and a real ZeroMQ receiver (no broker)."""

from __future__ import annotations

import itertools
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from fakes import Clock
from prometheus_client import REGISTRY

from schemas.facility import Camera, load_facility
from services.benchmarks.ingest_rig import facility_for_cameras, synthetic_video
from services.capture.__main__ import capture_command
from services.capture.service import CaptureService
from services.runtime.capture_settings import CaptureSettings
from services.runtime.frame_transport import FrameReceiver
from services.runtime.frame_wire import EncodedFrame, decode_frame
from services.runtime.shutdown import ShutdownSignal


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 20 fps source, small frames: decoding stays cheap on a busy 2-core machine.
    return synthetic_video(
        tmp_path_factory.mktemp("video") / "cam.avi", seconds=2, fps=20, width=320, height=240
    )


def camera(source: str, cid: str, fps: float = 5.0) -> Camera:
    with tempfile.TemporaryDirectory() as tmp:
        path = facility_for_cameras(
            Path(tmp) / "f.yaml", {cid: source}, fps, jpeg_quality=70, width=160, height=120
        )
        return load_facility(path).cameras[0]


class Running:
    """A CaptureService in a thread, sending to a receiver in this process."""

    def __init__(
        self, cam: Camera, clock: Callable[[], float] = time.monotonic, **settings: float
    ) -> None:
        self.receiver = FrameReceiver("tcp://127.0.0.1:*")
        self.settings = CaptureSettings(aggregator_endpoint=self.receiver.endpoint, **settings)
        self.shutdown = ShutdownSignal()
        self.service = CaptureService(cam, self.settings, self.shutdown, clock=clock)
        self.thread = threading.Thread(target=self.service.run, daemon=True)
        self.thread.start()

    def collect(self, seconds: float, stop_after: int = 0) -> list[tuple[float, EncodedFrame]]:
        """Frames received within ``seconds`` (or as soon as ``stop_after`` arrived)."""
        out: list[tuple[float, EncodedFrame]] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not (
            stop_after and len(out) >= stop_after
        ):
            parts = self.receiver.receive(left)
            if parts is not None:
                out.append((time.monotonic(), decode_frame(parts)))
        return out

    def stop(self) -> None:
        self.shutdown.request()
        self.thread.join(10)
        self.receiver.close()
        assert not self.thread.is_alive()


@pytest.fixture
def running() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for r in started:
        r.stop()


def test_file_source_is_decimated_numbered_resized_and_sent(
    video: Path, running: list[Running]
) -> None:
    cid = f"cap-{uuid.uuid4().hex[:6]}"
    run = Running(camera(f"file://{video}", cid, fps=5.0))
    running.append(run)
    frames = run.collect(1.0)  # warm-up: first open and decode
    frames = run.collect(4.0)
    assert 14 <= len(frames) <= 26, len(frames)  # 5 fps of a 20 fps source, for 4 s
    headers = [f.header for _, f in frames]
    assert all(h.camera_id == cid for h in headers)
    seqs = [h.seq for h in headers]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # consecutive: nothing lost
    times = [h.captured_at for h in headers]
    assert times == sorted(times)
    assert all(t.utcoffset() is not None and t.utcoffset().total_seconds() == 0 for t in times)
    spacing = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert np.median(spacing) == pytest.approx(0.2, abs=0.06)
    image = cv2.imdecode(np.frombuffer(frames[0][1].jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (120, 160, 3)  # resized to the configured resolution
    assert (headers[0].width, headers[0].height) == (160, 120)
    ok, detail = run.service.health()
    assert ok, detail


def test_unreachable_source_is_retried_and_reported_unhealthy(
    tmp_path: Path, running: list[Running]
) -> None:
    cid = f"cap-{uuid.uuid4().hex[:6]}"
    missing = tmp_path / "not-there.avi"
    clock = Clock()
    run = Running(
        camera(f"file://{missing}", cid),
        clock,
        watchdog_s=0.5,
        backoff_initial_s=0.05,
        backoff_max_s=0.1,
    )
    running.append(run)
    reconnects = (
        "depotwatch_capture_reconnects_total",
        {"camera_id": cid, "reason": "open_failed"},
    )

    deadline = time.monotonic() + 5
    while (REGISTRY.get_sample_value(*reconnects) or 0) < 3:
        assert time.monotonic() < deadline, "no reopen attempts"
        time.sleep(0.02)
    assert run.service.health()[0], "unhealthy before its watchdog period passed"
    clock.advance(0.6)  # the watchdog period passes without a frame
    ok, detail = run.service.health()
    assert not ok
    assert "no frame for" in detail
    assert run.collect(0.2) == []
    # The file appears (camera comes back): capture resumes on its own.
    synthetic_video(missing, seconds=1, fps=10, width=160, height=120)
    resumed = run.collect(5.0, stop_after=1)
    assert resumed, "capture did not resume after the source came back"
    # Every failed open counted; the frames say so (the API's camera health shows it).
    assert resumed[0][1].header.reconnects >= 3
    assert resumed[0][1].header.reconnects == run.service.reconnects


def test_capture_command_names_unknown_cameras(tmp_path: Path) -> None:
    config = facility_for_cameras(tmp_path / "f.yaml", {"cam-a": "rtsp://h/a"}, 2.0)
    result = CliRunner().invoke(capture_command, ["--camera", "cam-x", "--config", str(config)])
    assert result.exit_code != 0
    assert "no camera 'cam-x'" in result.output
    assert "cam-a" in result.output


def test_capture_command_rejects_a_bad_source_url(tmp_path: Path) -> None:
    config = facility_for_cameras(tmp_path / "f.yaml", {"cam-a": "rtsp://h/a"}, 2.0)
    result = CliRunner().invoke(
        capture_command, ["--camera", "cam-a", "--config", str(config), "--source", "ftp://x/y"]
    )
    assert result.exit_code != 0
    assert "--source" in result.output
    assert "rtsp://" in result.output
    assert len(result.output.strip().splitlines()) == 1
