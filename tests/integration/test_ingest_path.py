"""The ingest path for real: simulated RTSP cameras -> capture -> aggregator -> S3 + frames.v1.

Captures and the aggregator run as processes (``python -m services.capture`` / ``aggregator``),
the cameras are the simulator's GStreamer RTSP server, Kafka and S3 the session's embedded stack.
Every test uses its own camera ids and object prefix, so tests never see each other's frames.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

from schemas.facility import Camera, load_facility
from schemas.frames import FrameRef
from services.benchmarks.ingest_rig import (
    RefCollector,
    ServiceProcess,
    aggregator_process,
    capture_process,
    facility_for_cameras,
    metric_sum,
    wait_until,
)
from services.infra import EmbeddedInfra
from services.infra.processes import free_port
from services.runtime.settings import Settings
from services.runtime.storage import ObjectStore

pytestmark = pytest.mark.slow

WIDTH, HEIGHT, FPS = 320, 240, 5.0
# Colours (BGR) the cameras show, so a stored JPEG can be traced to the camera that sent it.
COLOURS = [(200, 40, 40), (40, 40, 200)]
FAST_CAPTURE = {
    "DEPOTWATCH_CAPTURE__WATCHDOG_S": "3",
    "DEPOTWATCH_CAPTURE__OPEN_TIMEOUT_S": "3",
    "DEPOTWATCH_CAPTURE__BACKOFF_MAX_S": "2",
}


class SimulatedCameras:
    """The simulator's RTSP server with a thread pushing coloured frames at FPS."""

    def __init__(self, cameras: list[Camera], port: int = 0) -> None:
        from services.simulator.serve import RtspCameraServer

        self.cameras = cameras
        self.server = RtspCameraServer(cameras, port=port)
        self._stop = threading.Event()
        self.paused = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    def start(self) -> SimulatedCameras:
        self.server.start()
        self._stop.clear()
        self._thread = threading.Thread(target=self._push, daemon=True)
        self._thread.start()
        return self

    def _push(self) -> None:
        n = 0
        while not self._stop.is_set():
            if self.paused.is_set():  # the server stays up but sends nothing (a hung camera)
                self._stop.wait(1 / FPS)
                continue
            for cam, colour in zip(self.cameras, COLOURS, strict=False):
                img = np.full((HEIGHT, WIDTH, 3), colour, dtype=np.uint8)
                cv2.putText(img, str(n), (10, 40), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 255))
                try:
                    self.server.push(cam.id, img)
                except (OSError, RuntimeError):
                    return  # server stopped
            n += 1
            self._stop.wait(1 / FPS)

    def stop(self) -> None:
        self._stop.set()
        self.server.stop()
        if self._thread is not None:
            self._thread.join(5)


@pytest.fixture
def rig(
    tmp_path: Path, stack_settings: Settings, unique_name: Callable[[str], str]
) -> Iterator[Rig]:
    rig = Rig(tmp_path, stack_settings, unique_name("frames").lower())
    try:
        yield rig
    finally:
        rig.close()


class Rig:
    """Cameras, captures, aggregator and a frames.v1 reader for one test; closes everything."""

    def __init__(self, workdir: Path, settings: Settings, prefix: str) -> None:
        self.workdir = workdir
        self.settings = settings
        self.prefix = prefix
        tag = uuid.uuid4().hex[:6]
        self.camera_ids = [f"it-{tag}-a", f"it-{tag}-b"]
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.processes: list[ServiceProcess] = []
        self.cameras: SimulatedCameras | None = None
        self.collector = RefCollector(settings, camera_prefix=f"it-{tag}-").start()
        self.store = ObjectStore(settings.s3)

    def serve_cameras(self, n: int, port: int = 0) -> SimulatedCameras:
        """Start (or restart on ``port``) the RTSP server for the first ``n`` cameras."""
        placeholder = facility_for_cameras(
            self.workdir / "sim.yaml",
            {c: "rtsp://127.0.0.1:1/x" for c in self.camera_ids[:n]},
            FPS,
            width=WIDTH,
            height=HEIGHT,
        )
        self.cameras = SimulatedCameras(load_facility(placeholder).cameras, port).start()
        return self.cameras

    def facility(self) -> Path:
        assert self.cameras is not None
        sources = {c.id: self.cameras.server.url(c.id) for c in self.cameras.cameras}
        return facility_for_cameras(
            self.workdir / "facility.yaml", sources, FPS, width=WIDTH, height=HEIGHT
        )

    def aggregator(self, **env: str) -> ServiceProcess:
        proc = aggregator_process(
            self.endpoint,
            self.settings,
            self.workdir,
            DEPOTWATCH_AGGREGATOR__KEY_PREFIX=self.prefix,
            **env,
        )
        self.processes.append(proc.start())
        return proc

    def capture(self, camera_id: str, **env: str) -> ServiceProcess:
        proc = capture_process(
            camera_id, self.facility(), self.endpoint, self.settings, self.workdir, **env
        )
        self.processes.append(proc.start())
        return proc

    def wait_refs(self, camera_id: str, count: int, timeout_s: float, after: float = 0) -> bool:
        """Wait until ``count`` refs of the camera arrived after monotonic time ``after``."""

        def enough() -> bool:
            fresh = [s for s in self.collector.samples if s.camera_id == camera_id]
            return len([s for s in fresh if s.received > after]) >= count

        return wait_until(enough, timeout_s)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_tail(15)}" for p in self.processes)

    def close(self) -> None:
        for p in self.processes:
            p.stop(timeout_s=10)
        if self.cameras is not None:
            self.cameras.stop()
        self.collector.stop()


def assert_refs_match_objects(rig: Rig, refs: list[FrameRef]) -> None:
    """Every ref names a stored object whose bytes, size, hash and pixels match it."""
    for ref in refs:
        data = rig.store.get(ref.key, ref.bucket)
        assert len(data) == ref.size, ref.key
        assert hashlib.sha256(data).hexdigest() == ref.sha256, ref.key
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (ref.height, ref.width, 3)
        # When it was stored, for the latency breakdown: after capture, not in the future.
        assert ref.stored_at is not None, ref.key
        assert ref.captured_at <= ref.stored_at <= datetime.now(UTC), ref.key


def test_frames_from_two_cameras_become_objects_and_refs(rig: Rig) -> None:
    rig.serve_cameras(2)
    aggregator = rig.aggregator()
    for cid in rig.camera_ids:
        rig.capture(cid)
    for cid in rig.camera_ids:
        assert rig.wait_refs(cid, 6, timeout_s=45), rig.logs()
    dropped = metric_sum(aggregator.metrics(), "depotwatch_aggregator_frames_dropped_total")
    for p in rig.processes:
        assert p.stop() == 0, rig.logs()  # graceful SIGTERM: exit code 0
    time.sleep(0.5)  # last acks of the drained frames
    stored = set(rig.store.keys(f"{rig.prefix}/"))
    for index, cid in enumerate(rig.camera_ids):
        samples = [s for s in rig.collector.samples if s.camera_id == cid]
        refs = [s.ref for s in samples]
        assert all(s.key == cid.encode() for s in samples)  # keyed by camera id
        assert all(r.bucket == rig.settings.s3.bucket for r in refs)
        assert all(r.key.startswith(f"{rig.prefix}/{cid}/") for r in refs)
        assert all((r.width, r.height) == (WIDTH, HEIGHT) for r in refs)
        seqs = [r.seq for r in refs]
        assert seqs == sorted(set(seqs)), "refs of one camera arrive once each, in order"
        times = [r.captured_at for r in refs]
        assert times == sorted(times)
        assert_refs_match_objects(rig, refs)
        # The pixels are this camera's: its colour, not the other camera's.
        first = rig.store.get(refs[0].key)
        image = cv2.imdecode(np.frombuffer(first, np.uint8), cv2.IMREAD_COLOR)
        mean = image[60:, :, :].reshape(-1, 3).mean(axis=0)
        assert np.abs(mean - np.array(COLOURS[index])).max() < 25, mean
    ref_keys = {r.key for r in rig.collector.refs()}
    assert ref_keys == stored, "every stored frame has exactly one ref, and no ref is dangling"
    assert dropped == 0
    assert rig.store.expiry_days() == rig.settings.s3.frame_retention_days
    assert dropped == 0


def test_capture_resumes_within_10s_after_the_rtsp_server_restarts(rig: Rig) -> None:
    cameras = rig.serve_cameras(1)
    port = cameras.port
    cid = rig.camera_ids[0]
    aggregator = rig.aggregator(DEPOTWATCH_AGGREGATOR__WATCHDOG_S="3")
    capture = rig.capture(cid, **FAST_CAPTURE)
    assert rig.wait_refs(cid, 3, timeout_s=45), rig.logs()

    cameras.stop()
    # Both services notice the silent camera on /healthz within their watchdog period.
    assert wait_until(lambda: capture.http("/healthz")[0] == 503, 10), rig.logs()
    assert wait_until(lambda: aggregator.http("/healthz")[0] == 503, 10), rig.logs()
    time.sleep(2)
    assert capture.running

    restarted = time.monotonic()
    rig.serve_cameras(1, port=port)
    assert rig.wait_refs(cid, 1, timeout_s=10, after=restarted), rig.logs()
    resumed_after = (
        min(s.received for s in rig.collector.samples if s.received > restarted) - restarted
    )
    assert resumed_after < 10
    assert wait_until(lambda: capture.http("/healthz")[0] == 200, 5)
    reconnects = metric_sum(capture.metrics(), "depotwatch_capture_reconnects_total")
    assert reconnects >= 1


def test_watchdog_reopens_a_stream_that_goes_silent(rig: Rig) -> None:
    cameras = rig.serve_cameras(1)
    cid = rig.camera_ids[0]
    rig.aggregator()
    capture = rig.capture(cid, **FAST_CAPTURE)
    assert rig.wait_refs(cid, 3, timeout_s=45), rig.logs()

    cameras.paused.set()

    def watchdog_fired() -> bool:
        metrics = capture.metrics()
        return metric_sum(metrics, "depotwatch_capture_reconnects_total", reason="watchdog") >= 1

    assert wait_until(watchdog_fired, 15), rig.logs()
    assert wait_until(lambda: capture.http("/healthz")[0] == 503, 5)
    resumed = time.monotonic()
    cameras.paused.clear()
    assert rig.wait_refs(cid, 2, timeout_s=15, after=resumed), rig.logs()
    assert "no frame for" in capture.log_path.read_text()


def test_capture_keeps_running_while_the_aggregator_is_killed_and_restarted(rig: Rig) -> None:
    rig.serve_cameras(1)
    cid = rig.camera_ids[0]
    aggregator = rig.aggregator()
    capture = rig.capture(cid)
    assert rig.wait_refs(cid, 3, timeout_s=45), rig.logs()

    aggregator.kill()
    sent_before = metric_sum(capture.metrics(), "depotwatch_capture_frames_out_total")
    time.sleep(3)
    assert capture.running
    metrics = capture.metrics()
    # Nobody to send to: frames are dropped (newest kept), never piled up.
    assert metric_sum(metrics, "depotwatch_capture_frames_out_total") <= sent_before + 4
    assert metric_sum(metrics, "depotwatch_capture_frames_dropped_total") > 0
    assert metric_sum(metrics, "depotwatch_capture_queue_depth") <= 8

    restarted = time.monotonic()
    aggregator.start()
    assert rig.wait_refs(cid, 3, timeout_s=30, after=restarted), rig.logs()
    assert capture.running


def test_s3_outage_never_yields_a_ref_to_a_missing_object(
    rig: Rig, embedded_stack: EmbeddedInfra
) -> None:
    rig.serve_cameras(1)
    cid = rig.camera_ids[0]
    aggregator = rig.aggregator(DEPOTWATCH_AGGREGATOR__RETRY_MAX_S="1")
    rig.capture(cid)
    assert rig.wait_refs(cid, 3, timeout_s=45), rig.logs()
    try:
        embedded_stack.stop("s3", force=True)
        down_at = time.monotonic()

        def failing() -> bool:
            return (
                metric_sum(aggregator.metrics(), "depotwatch_aggregator_s3_put_failures_total") > 0
            )

        assert wait_until(failing, 15), rig.logs()
        # Refs that arrive now are of frames stored before the outage only.
        time.sleep(max(0.0, 6 - (time.monotonic() - down_at)))
        buffered = metric_sum(aggregator.metrics(), "depotwatch_aggregator_queue_depth")
        assert buffered > 0
    finally:
        embedded_stack.start("s3")
        if not embedded_stack.status().healthy:
            embedded_stack.stop("kafka", force=True)
            embedded_stack.start("kafka")
    back = time.monotonic()
    assert rig.wait_refs(cid, 5, timeout_s=60, after=back), rig.logs()

    def drained() -> bool:
        m = aggregator.metrics()
        return (
            metric_sum(m, "depotwatch_aggregator_queue_depth") == 0
            and metric_sum(m, "depotwatch_aggregator_pending_refs") == 0
        )

    assert wait_until(drained, 60), rig.logs()
    dropped = metric_sum(aggregator.metrics(), "depotwatch_aggregator_frames_dropped_total")
    for p in rig.processes:
        p.stop()
    time.sleep(0.5)
    refs = rig.collector.refs(cid)
    assert_refs_match_objects(rig, refs)
    stored = set(rig.store.keys(f"{rig.prefix}/"))
    assert {r.key for r in refs} == stored, "every stored frame's ref arrived after the outage"
    assert dropped == 0


def test_kafka_outage_longer_than_the_produce_timeout_loses_no_ref(
    rig: Rig, embedded_stack: EmbeddedInfra
) -> None:
    rig.serve_cameras(1)
    cid = rig.camera_ids[0]
    aggregator = rig.aggregator(DEPOTWATCH_AGGREGATOR__PRODUCE_TIMEOUT_S="3")
    rig.capture(cid)
    assert rig.wait_refs(cid, 3, timeout_s=45), rig.logs()
    try:
        embedded_stack.stop("kafka", force=True)

        def timed_out() -> bool:
            m = aggregator.metrics()
            return metric_sum(m, "depotwatch_aggregator_produce_failures_total") > 0

        # Refs time out in the producer while frames keep being stored.
        assert wait_until(timed_out, 20), rig.logs()
    finally:
        embedded_stack.start("kafka")

    def drained() -> bool:
        m = aggregator.metrics()
        return metric_sum(m, "depotwatch_aggregator_pending_refs") == 0 and metric_sum(
            m, "depotwatch_aggregator_frames_stored_total"
        ) == metric_sum(m, "depotwatch_aggregator_frames_out_total")

    back = time.monotonic()
    assert rig.wait_refs(cid, 3, timeout_s=60, after=back), rig.logs()
    assert wait_until(drained, 60), rig.logs()
    for p in rig.processes:
        p.stop()
    time.sleep(0.5)
    refs = rig.collector.refs(cid)
    keys = [r.key for r in refs]
    assert set(keys) == set(rig.store.keys(f"{rig.prefix}/")), "every stored frame has its ref"
    assert_refs_match_objects(rig, refs)
