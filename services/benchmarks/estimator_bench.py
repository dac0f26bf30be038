"""Shared parts of ``bench detect`` and ``bench ocr``: rendered frames in S3, refs on a
bench-owned topic, the estimator service loop driven to completion, and timing helpers.

The service side is the real frame loop (``FrameStream``: consume, S3 fetch, verify, decode,
handle, publish, wait for acks, mark done) run in this process, so its cost can be compared
with a bare loop over the same decoded images in the same run.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
from prometheus_client import REGISTRY

from schemas.base import Message
from schemas.facility import FacilityConfig
from schemas.frames import FrameRef
from schemas.topics import TopicSpec, topics_for
from services.runtime.frame_stream import FrameStream
from services.runtime.frames import REDUCED_DECODE, Image, decode_reduction
from services.runtime.kafka import MessageProducer, TopicAdmin
from services.runtime.settings import Settings
from services.runtime.storage import ObjectStore

BENCH_FLOW = "bench"
"""Flow the benchmarks publish to (its topics are created if missing)."""
BENCH_SCENARIO = "test-busy"


@dataclass(frozen=True)
class BenchFrame:
    """One JPEG as the aggregator stores it, and its decoded pixels (for the bare loop)."""

    camera_id: str
    jpeg: bytes
    image: Image


@dataclass(frozen=True)
class LoopTiming:
    """Frames handled and the seconds it took."""

    name: str
    frames: int
    seconds: float
    cpu_seconds: float = 0.0
    """CPU time of this process (all threads) meanwhile: robust to other load on the host."""

    @property
    def fps(self) -> float:
        """Frames per second."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_ms_per_frame(self) -> float:
        """CPU milliseconds per frame (this process, all threads)."""
        return 1000.0 * self.cpu_seconds / self.frames if self.frames else 0.0

    @property
    def ms_per_frame(self) -> float:
        """Milliseconds per frame."""
        return 1000.0 * self.seconds / self.frames if self.frames else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "frames": self.frames,
            "seconds": round(self.seconds, 3),
            "fps": round(self.fps, 2),
            "ms_per_frame": round(self.ms_per_frame, 2),
            "cpu_ms_per_frame": round(self.cpu_ms_per_frame, 2),
        }


def render_bench_frames(facility: FacilityConfig, count: int, seed: int = 9700) -> list[BenchFrame]:
    """``count`` frames of a held-out busy scenario, every camera, JPEG at camera quality."""
    from services.simulator.render import Renderer
    from services.simulator.world import Simulation, load_scenario

    renderer = Renderer(facility)
    sim = Simulation(facility, load_scenario(BENCH_SCENARIO), seed)
    cams = list(renderer.views)
    ticks = np.linspace(0, sim.ticks - 1, max(1, -(-count // len(cams)))).astype(int)
    out: list[BenchFrame] = []
    for tick in ticks:
        state = sim.state(int(tick))
        for cam_id in cams:
            if len(out) == count:
                return out
            frame = renderer.render(state, cam_id)
            quality = facility.camera(cam_id).jpeg_quality
            ok, buf = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, quality])
            assert ok
            jpeg = buf.tobytes()
            image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            out.append(BenchFrame(cam_id, jpeg, np.asarray(image, np.uint8)))
    return out


def decoded_like_service(frames: list[BenchFrame], detector_input_px: int | None) -> list[Image]:
    """The frames decoded exactly as the service decodes them (reduced to the model's input)."""
    out = []
    for frame in frames:
        h, w = frame.image.shape[:2]
        reduction = decode_reduction(w, h, detector_input_px)
        buf = np.frombuffer(frame.jpeg, np.uint8)
        out.append(np.asarray(cv2.imdecode(buf, REDUCED_DECODE[reduction]), np.uint8))
    return out


@contextmanager
def bench_settings(use_settings: bool, say: Callable[[str], None]) -> Iterator[Settings]:
    """Settings of a fresh embedded stack (stopped afterwards), or of DEPOTWATCH_*."""
    from services.runtime.settings import load_settings

    if use_settings:
        yield load_settings()
        return
    from services.infra import EmbeddedInfra, settings_on_free_ports

    workdir = Path(tempfile.mkdtemp(prefix="depotwatch-bench-"))
    stack = EmbeddedInfra(settings_on_free_ports(workdir / "infra"), flows=[BENCH_FLOW])
    try:
        say("starting an embedded broker + S3")
        stack.up()
        yield stack.client_settings
    finally:
        say("stopping the embedded stack")
        stack.down()
        shutil.rmtree(workdir, ignore_errors=True)


def absolute_weights(config: dict[str, Any], base: Path) -> None:
    """Make the flows' weight paths absolute: facility.yaml's are relative to it, and a copy
    written elsewhere would not find them."""
    for stages in config.get("flows", {}).values():
        for stage in (stages or {}).values():
            if isinstance(stage, dict) and "weights" in stage:
                stage["weights"] = str((base / stage["weights"]).resolve())


def bench_facility(facility_path: Path, workdir: Path) -> Path:
    """The facility file with a ``bench`` flow (a copy of prod) for the benchmark's outputs."""
    data = yaml.safe_load(facility_path.read_text())
    absolute_weights(data, facility_path.parent)
    data["flows"][BENCH_FLOW] = dict(data["flows"]["prod"])
    path = workdir / "facility.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def bench_topic(settings: Settings, partitions: int = 6, schema: type[Message] = FrameRef) -> str:
    """A new input topic (of frame refs, or of ``schema``) for one benchmark, and the bench
    flow's output topics."""
    topic = f"bench-frames-{uuid.uuid4().hex[:8]}"
    specs = [s for s in topics_for([BENCH_FLOW]) if BENCH_FLOW in s.name]
    specs.append(TopicSpec(topic, schema, partitions, {"cleanup.policy": "delete"}))
    TopicAdmin(settings.kafka).ensure(specs)
    return topic


def publish_frames(
    settings: Settings,
    frames: list[BenchFrame],
    topic: str,
    first_seq: int = 0,
    about: Callable[[int, FrameRef], Message] | None = None,
) -> None:
    """Store the JPEGs and publish their refs on ``topic`` (acknowledged); with ``about``, the
    message ``about(i, ref)`` about the i-th frame instead of its ref."""
    store = ObjectStore(settings.s3)
    store.ensure_bucket()
    producer = MessageProducer(settings.kafka, client_id="bench-frames")
    start = datetime.now(UTC)
    try:
        for seq, frame in enumerate(frames, start=first_seq):
            key = f"bench/{topic}/{frame.camera_id}/{seq:08d}.jpg"
            stored = store.put(key, frame.jpeg, "image/jpeg")
            ref = FrameRef(
                camera_id=frame.camera_id,
                seq=seq,
                captured_at=start + timedelta(milliseconds=seq),
                bucket=stored.bucket,
                key=key,
                width=frame.image.shape[1],
                height=frame.image.shape[0],
                size=stored.size,
                sha256=stored.sha256,
            )
            producer.publish(ref if about is None else about(seq - first_seq, ref), topic=topic)
        if producer.flush(30):
            raise RuntimeError("the broker did not acknowledge the benchmark's frame refs")
    finally:
        producer.close()


def drive(stream: FrameStream[Any], until_processed: int, timeout_s: float = 600.0) -> LoopTiming:
    """Run the service loop until ``until_processed`` frames (in total) are acknowledged.

    The clock starts after the first batch: joining the consumer group, waking up from the
    idle poll and fetching cold are start-up, not throughput.
    """
    deadline = time.monotonic() + timeout_s
    start = stream.processed
    first = 0
    t0 = c0 = 0.0
    handled = 0
    while stream.processed < until_processed:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the service handled {stream.processed - start} of "
                f"{until_processed - start} frames in {timeout_s} s"
            )
        if start + handled >= until_processed:
            # Everything is handled: wait for the last acks instead of an idle poll.
            stream.flush()
            continue
        done = stream.run_once()
        handled += done
        if done and not t0:
            first, t0, c0 = done, time.perf_counter(), time.process_time()
    return LoopTiming(
        "service",
        until_processed - start - first,
        time.perf_counter() - t0,
        time.process_time() - c0,
    )


def median_fps(runs: list[LoopTiming]) -> float:
    """Median frames/s of several runs (machine load drifts; the median resists it)."""
    return float(np.median([r.fps for r in runs])) if runs else 0.0


def median_cpu_ms(runs: list[LoopTiming]) -> float:
    """Median CPU milliseconds per frame of several runs."""
    return float(np.median([r.cpu_ms_per_frame for r in runs])) if runs else 0.0


def stage_seconds(service: str, flow: str) -> dict[str, float]:
    """Seconds spent so far per frame-loop stage (from the service's own metrics)."""
    out = {}
    for stage in ("fetch", "handle", "publish", "ack_wait"):
        value = REGISTRY.get_sample_value(
            "depotwatch_frame_stage_seconds_sum",
            {"service": service, "flow": flow, "stage": stage},
        )
        out[stage] = float(value or 0.0)
    return out


def timed(name: str, frames: int, body: Callable[[], None]) -> LoopTiming:
    """Time ``body`` (which handles ``frames`` frames)."""
    t0, c0 = time.perf_counter(), time.process_time()
    body()
    return LoopTiming(name, frames, time.perf_counter() - t0, time.process_time() - c0)


def workdir() -> Path:
    """A temporary directory for one benchmark run."""
    return Path(tempfile.mkdtemp(prefix="depotwatch-bench-"))


def side_by_side(
    stream: FrameStream[Any],
    service: str,
    rounds: int,
    frames: int,
    bare: Callable[[], None],
    publish: Callable[[int], None],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Alternate the bare loop and the service over ``rounds`` rounds of ``frames`` frames
    (bare, publish + service, ..., bare: drifting load hits both) and return the figures both
    benchmarks report: median frames/s and CPU ms per frame of each side, every round, and the
    service's time per frame-loop stage. ``publish(r)`` puts round ``r``'s messages on the
    service's topic; the stream is closed at the end.
    """
    bare_runs: list[LoopTiming] = []
    service_runs: list[LoopTiming] = []
    stages0 = stage_seconds(service, BENCH_FLOW)
    try:
        for r in range(rounds):
            say(f"round {r + 1}/{rounds}: bare, then service")
            bare_runs.append(timed("bare", frames, bare))
            publish(r)
            service_runs.append(drive(stream, (r + 1) * frames))
        bare_runs.append(timed("bare", frames, bare))
    finally:
        stream.close()
    stages1 = stage_seconds(service, BENCH_FLOW)
    handled = rounds * frames
    service_fps, bare_fps = median_fps(service_runs), median_fps(bare_runs)
    return {
        "service_fps": round(service_fps, 2),
        "bare_fps": round(bare_fps, 2),
        "service_rounds": [t.as_dict() for t in service_runs],
        "bare_rounds": [t.as_dict() for t in bare_runs],
        "service_stage_ms_per_frame": {
            k: round(1000 * (stages1[k] - stages0[k]) / handled, 2) for k in stages1
        },
        "service_vs_bare": round(service_fps / bare_fps, 3) if bare_fps else None,
        "service_cpu_ms_per_frame": round(median_cpu_ms(service_runs), 2),
        "bare_cpu_ms_per_frame": round(median_cpu_ms(bare_runs), 2),
    }
