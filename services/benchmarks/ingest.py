"""Ingest path: N simulated cameras -> capture -> aggregator -> S3 + Kafka, vs bare baselines.

Runs the real ``capture`` and ``aggregator`` processes on the embedded stack (or the one the
settings point at), measures sustained frames/s, capture -> FrameRef-on-Kafka latency, CPU per
frame and drops, then, on the same JPEG payloads, a bare pyzmq PUSH/PULL loop and a bare
minio put + confluent produce loop. Prints a report (and optionally writes JSON).
"""

from __future__ import annotations

import io
import itertools
import json
import shutil
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import cv2

from services.benchmarks.ingest_rig import (
    RefCollector,
    RefSample,
    ServiceProcess,
    aggregator_process,
    capture_process,
    facility_for_cameras,
    metric_sum,
    synthetic_video,
    wait_until,
)
from services.infra.processes import free_port
from services.runtime.settings import Settings
from services.runtime.stats import percentile

CAMERA_PREFIX = "bench-cam-"
ISOLATED_PREFIX = "bench-iso-"


@dataclass
class PipelineResult:
    """What one phase (captures -> aggregator, or bench sender -> aggregator) measured."""

    phase: str
    cameras: int
    fps_per_camera: float
    seconds: float
    offered_fps: float
    sustained_fps: float
    captured_fps: float | None
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    latency_max_ms: float | None
    s3_put_mean_ms: float | None
    produce_ack_mean_ms: float | None
    s3_puts_over_1s: float
    produce_acks_over_1s: float
    aggregator_cpu_ms_per_frame: float
    aggregator_cpu_percent: float
    capture_cpu_ms_per_frame: float | None
    capture_dropped: float
    aggregator_dropped: float
    seq_gaps: int


BASELINE_WARM = 20
"""Frames the bare put + produce loop sends before it measures."""


@dataclass
class BaselineResult:
    """A bare loop over the same payloads."""

    name: str
    frames: int
    frames_per_s: float
    cpu_ms_per_frame: float


def _jpeg_payloads(video: Path, quality: int, limit: int) -> list[bytes]:
    cap = cv2.VideoCapture(str(video))
    out: list[bytes] = []
    try:
        while len(out) < limit:
            ok, img = cap.read()
            if not ok:
                break
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok:
                out.append(buf.tobytes())
    finally:
        cap.release()
    return out


def _seq_gaps(samples: list[RefSample]) -> int:
    by_camera: dict[str, list[int]] = defaultdict(list)
    for s in samples:
        by_camera[s.camera_id].append(s.seq)
    gaps = 0
    for seqs in by_camera.values():
        seqs.sort()
        gaps += sum(b - a - 1 for a, b in itertools.pairwise(seqs) if b - a > 1)
    return gaps


def _ms(cpu_s: float, frames: float) -> float:
    return round(cpu_s * 1000 / max(1.0, frames), 2)


def _mean_ms(m0: dict[str, float], m1: dict[str, float], name: str) -> float | None:
    n = metric_sum(m1, f"{name}_count") - metric_sum(m0, f"{name}_count")
    total = metric_sum(m1, f"{name}_sum") - metric_sum(m0, f"{name}_sum")
    return round(total * 1000 / n, 1) if n > 0 else None


def _over_1s(m0: dict[str, float], m1: dict[str, float], name: str) -> float:
    """How many observations of a histogram took longer than 1 s within the window."""

    def over(m: dict[str, float]) -> float:
        return metric_sum(m, f"{name}_count") - metric_sum(m, f"{name}_bucket", le="1.0")

    return over(m1) - over(m0)


@dataclass
class _Snapshot:
    t: float
    wall: datetime
    aggregator_cpu: float
    capture_cpu: float
    aggregator: dict[str, float]
    captures: list[dict[str, float]]


def _snapshot(aggregator: ServiceProcess, captures: list[ServiceProcess]) -> _Snapshot:
    return _Snapshot(
        time.monotonic(),
        datetime.now(UTC),
        aggregator.cpu_seconds(),
        sum(c.cpu_seconds() for c in captures),
        aggregator.metrics(),
        [c.metrics() for c in captures],
    )


def _result(
    phase: str,
    cameras: int,
    fps: float,
    a: _Snapshot,
    b: _Snapshot,
    samples: list[RefSample],
    prefix: str,
) -> PipelineResult:
    # Frames CAPTURED in the window, wherever their refs arrived: a latency spike must not
    # look like lost throughput (the caller waits for stragglers before calling this).
    window = [
        s
        for s in samples
        if a.wall <= s.ref.captured_at < b.wall and s.camera_id.startswith(prefix)
    ]
    lat = sorted(s.latency_s for s in window)
    seconds = b.t - a.t
    stored = metric_sum(b.aggregator, "depotwatch_aggregator_frames_stored_total") - metric_sum(
        a.aggregator, "depotwatch_aggregator_frames_stored_total"
    )
    dropped = "depotwatch_aggregator_frames_dropped_total"
    cap_dropped = sum(
        metric_sum(m1, "depotwatch_capture_frames_dropped_total")
        - metric_sum(m0, "depotwatch_capture_frames_dropped_total")
        for m0, m1 in zip(a.captures, b.captures, strict=True)
    )

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 1)

    return PipelineResult(
        phase=phase,
        cameras=cameras,
        fps_per_camera=fps,
        seconds=round(seconds, 1),
        offered_fps=cameras * fps,
        sustained_fps=round(len(window) / seconds, 2),
        captured_fps=(
            round(
                sum(
                    metric_sum(m1, "depotwatch_capture_frames_in_total")
                    - metric_sum(m0, "depotwatch_capture_frames_in_total")
                    for m0, m1 in zip(a.captures, b.captures, strict=True)
                )
                / seconds,
                2,
            )
            if a.captures
            else None
        ),
        latency_p50_ms=ms(percentile(lat, 0.5)),
        latency_p99_ms=ms(percentile(lat, 0.99)),
        latency_max_ms=ms(lat[-1] if lat else None),
        s3_put_mean_ms=_mean_ms(a.aggregator, b.aggregator, "depotwatch_aggregator_s3_put_seconds"),
        produce_ack_mean_ms=_mean_ms(
            a.aggregator, b.aggregator, "depotwatch_aggregator_produce_seconds"
        ),
        s3_puts_over_1s=_over_1s(
            a.aggregator, b.aggregator, "depotwatch_aggregator_s3_put_seconds"
        ),
        produce_acks_over_1s=_over_1s(
            a.aggregator, b.aggregator, "depotwatch_aggregator_produce_seconds"
        ),
        aggregator_cpu_ms_per_frame=_ms(b.aggregator_cpu - a.aggregator_cpu, stored),
        aggregator_cpu_percent=round((b.aggregator_cpu - a.aggregator_cpu) * 100 / seconds, 1),
        capture_cpu_ms_per_frame=(
            _ms(b.capture_cpu - a.capture_cpu, len(window)) if a.captures else None
        ),
        capture_dropped=cap_dropped,
        aggregator_dropped=metric_sum(b.aggregator, dropped) - metric_sum(a.aggregator, dropped),
        seq_gaps=_seq_gaps(window),
    )


def _feed(endpoint: str, payloads: list[bytes], cameras: int, fps: float, stop: float) -> None:
    """Send the payloads as ``cameras`` cameras at ``fps`` each until monotonic ``stop``."""
    from services.runtime.frame_transport import FrameSender
    from services.runtime.frame_wire import EncodedFrame, FrameHeader

    sender = FrameSender(endpoint, send_hwm=1000)
    seqs = [int(time.time() * 1000)] * cameras
    period = 1.0 / (cameras * fps)
    due = time.monotonic()
    i = 0
    try:
        while due < stop:
            cam = i % cameras
            frame = EncodedFrame(
                FrameHeader(
                    camera_id=f"{ISOLATED_PREFIX}{cam + 1:02d}",
                    seq=seqs[cam],
                    captured_at=datetime.now(UTC),
                    width=1280,
                    height=720,
                ),
                payloads[i % len(payloads)],
            )
            if sender.try_send(frame):
                seqs[cam] += 1
                i += 1
            due += period
            time.sleep(max(0.0, due - time.monotonic()))
    finally:
        sender.close()


def _wait_for_stragglers(collector: RefCollector, quiet_s: float = 2.0, cap_s: float = 30) -> None:
    """Wait until refs stop arriving for ``quiet_s`` (at most ``cap_s``)."""
    deadline = time.monotonic() + cap_s
    while time.monotonic() < deadline:
        last = collector.samples[-1].received if collector.samples else 0.0
        if time.monotonic() - last >= quiet_s:
            return
        time.sleep(0.2)


def run_pipeline(
    settings: Settings,
    workdir: Path,
    cameras: int,
    fps: float,
    seconds: float,
    warmup: float,
    quality: int,
    say: Any,
) -> tuple[list[PipelineResult], list[bytes]]:
    """Phase 1: real captures -> aggregator. Phase 2: the aggregator alone, fed the same
    payloads at the same rate by this process (no capture processes competing for CPU)."""
    video = synthetic_video(workdir / "camera.avi", seconds=8, fps=fps)
    payloads = _jpeg_payloads(video, quality, 40)
    ids = [f"{CAMERA_PREFIX}{i:02d}" for i in range(1, cameras + 1)]
    config = facility_for_cameras(
        workdir / "facility.yaml", {c: f"file://{video}" for c in ids}, fps, quality
    )
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    aggregator = aggregator_process(
        endpoint,
        settings,
        workdir,
        DEPOTWATCH_AGGREGATOR__KEY_PREFIX=f"bench/{uuid.uuid4().hex[:8]}",
    )
    captures = [capture_process(c, config, endpoint, settings, workdir) for c in ids]
    collector = RefCollector(settings, camera_prefix="bench-").start()
    results: list[PipelineResult] = []
    try:
        aggregator.start()
        if not wait_until(aggregator.http_ok, 60):
            raise click.ClickException(f"aggregator did not start:\n{aggregator.log_tail()}")
        for c in captures:
            c.start()
        say(f"phase 1: {cameras} capture processes; warming up {warmup:.0f}s")

        def all_seen() -> bool:
            return len({s.camera_id for s in collector.samples}) >= cameras

        if not wait_until(all_seen, 60):
            raise click.ClickException(
                "not every camera's refs arrived within 60 s:\n" + aggregator.log_tail()
            )
        time.sleep(warmup)
        a = _snapshot(aggregator, captures)
        say(f"phase 1: measuring {seconds:.0f}s")
        time.sleep(seconds)
        b = _snapshot(aggregator, captures)
        for c in captures:
            c.stop()
        _wait_for_stragglers(collector)
        results.append(
            _result("captures+aggregator", cameras, fps, a, b, collector.samples, CAMERA_PREFIX)
        )
        iso_seconds = min(seconds, 20.0)
        say(f"phase 2: aggregator alone, fed by this process, {iso_seconds:.0f}s")
        stop_at = time.monotonic() + warmup + iso_seconds
        feeder = threading.Thread(
            target=_feed, args=(endpoint, payloads, cameras, fps, stop_at), daemon=True
        )
        feeder.start()
        time.sleep(warmup)
        a = _snapshot(aggregator, [])
        time.sleep(iso_seconds)
        b = _snapshot(aggregator, [])
        feeder.join(10)
        _wait_for_stragglers(collector)
        results.append(
            _result("aggregator alone", cameras, fps, a, b, collector.samples, ISOLATED_PREFIX)
        )
    finally:
        for c in captures:
            c.stop()
        aggregator.stop()
        collector.stop()
        for p in [aggregator, *captures]:
            if p.running:
                p.kill()
    return results, payloads


def baseline_zmq(payloads: list[bytes], frames: int) -> BaselineResult:
    """Bare pyzmq PUSH -> PULL over loopback TCP, same two-part messages, one process."""
    import zmq

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    header = b'{"v":1,"camera_id":"bench-01","seq":1,"captured_at":"2026-01-01T00:00:00Z"}'
    received = 0

    def drain() -> None:
        nonlocal received
        while received < frames:
            pull.recv_multipart()
            received += 1

    receiver = threading.Thread(target=drain, daemon=True)
    cpu0, t0 = time.process_time(), time.perf_counter()
    receiver.start()
    for i in range(frames):
        push.send_multipart([header, payloads[i % len(payloads)]], copy=False)
    receiver.join(60)
    cpu1, t1 = time.process_time(), time.perf_counter()
    push.close(0)
    pull.close(0)
    ctx.term()
    return BaselineResult(
        "pyzmq push/pull", received, round(received / (t1 - t0), 1), _ms(cpu1 - cpu0, received)
    )


def baseline_put_produce(
    settings: Settings,
    payloads: list[bytes],
    frames: int,
    rate: float | None,
    prefix: str | None = None,
) -> BaselineResult:
    """Bare minio put_object + confluent produce (idempotent, acks=all), one thread.

    ``rate`` paces the loop (frames/s) like cameras do; None runs it flat out. The first 20
    frames warm connections up and are not measured. Objects go to ``<prefix>/<i:06d>.jpg``.
    """
    from confluent_kafka import Producer

    from schemas.frames import FrameRef
    from services.runtime.storage import ObjectStore

    client = ObjectStore(settings.s3).raw
    producer = Producer(
        {
            **settings.kafka.client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
        }
    )
    topic = FrameRef.topic_name()
    prefix = prefix or f"bench-baseline/{uuid.uuid4().hex[:8]}"
    ref = FrameRef(
        camera_id="baseline",
        seq=0,
        captured_at=datetime.now(UTC),
        bucket=settings.s3.bucket,
        key=f"{prefix}/000000.jpg",
        width=1280,
        height=720,
        size=1,
        sha256="0" * 64,
    )
    value = ref.model_dump_json().encode()
    warm = BASELINE_WARM

    def one(i: int) -> None:
        data = payloads[i % len(payloads)]
        client.put_object(
            settings.s3.bucket, f"{prefix}/{i:06d}.jpg", io.BytesIO(data), len(data), "image/jpeg"
        )
        producer.produce(topic, value=value, key=b"baseline")
        producer.poll(0)

    for i in range(warm):
        one(i)
    producer.flush(30)
    cpu0, t0 = time.process_time(), time.perf_counter()
    due = time.monotonic()
    for i in range(warm, warm + frames):
        one(i)
        if rate is not None:
            due += 1.0 / rate
            # Serve acks while waiting, as a real service would (poll returns on each ack).
            while (left := due - time.monotonic()) > 0:
                producer.poll(left)
    producer.flush(30)
    cpu1, t1 = time.process_time(), time.perf_counter()
    name = "minio put + confluent produce" + (f" @{rate:g}/s" if rate else " flat out")
    return BaselineResult(name, frames, round(frames / (t1 - t0), 1), _ms(cpu1 - cpu0, frames))


@click.command("ingest")
@click.option("--cameras", default=8, show_default=True, type=click.IntRange(1, 64))
@click.option("--fps", default=5.0, show_default=True, type=click.FloatRange(0.1, 60))
@click.option("--seconds", default=30.0, show_default=True, help="Measured duration.")
@click.option("--warmup", default=5.0, show_default=True, help="Seconds before measuring.")
@click.option("--jpeg-quality", default=85, show_default=True, type=click.IntRange(30, 100))
@click.option("--baseline-frames", default=400, show_default=True, type=click.IntRange(10))
@click.option(
    "--use-settings",
    is_flag=True,
    help="Use the Kafka/S3 of DEPOTWATCH_* (e.g. `depotwatch infra up`) instead of a fresh stack.",
)
@click.option("--json-out", type=click.Path(path_type=Path), help="Also write results as JSON.")
def bench_command(
    cameras: int,
    fps: float,
    seconds: float,
    warmup: float,
    jpeg_quality: int,
    baseline_frames: int,
    use_settings: bool,
    json_out: Path | None,
) -> None:
    """Ingest throughput, latency and CPU per frame, with bare pyzmq and put+produce baselines."""
    from services.runtime.settings import load_settings

    def say(line: str) -> None:
        click.echo(f"[bench ingest] {line}", err=True)

    workdir = Path(tempfile.mkdtemp(prefix="depotwatch-bench-ingest-"))
    stack = None
    try:
        if use_settings:
            settings = load_settings()
        else:
            from services.infra import EmbeddedInfra, settings_on_free_ports

            stack = EmbeddedInfra(
                settings_on_free_ports(workdir / "infra"), flows=["prod"], progress=say
            )
            stack.up()
            settings = stack.client_settings
        phases, payloads = run_pipeline(
            settings, workdir, cameras, fps, seconds, warmup, jpeg_quality, say
        )
        say("baselines on the same payloads")
        baselines = [
            baseline_zmq(payloads, baseline_frames * 5),
            baseline_put_produce(settings, payloads, baseline_frames, rate=cameras * fps),
            baseline_put_produce(settings, payloads, baseline_frames, rate=None),
        ]
    finally:
        if stack is not None:
            say("stopping the embedded stack")
            stack.down()
        shutil.rmtree(workdir, ignore_errors=True)
    paced = baselines[1].cpu_ms_per_frame
    report = {
        "payload_kib_mean": round(sum(map(len, payloads)) / len(payloads) / 1024, 1),
        "phases": [asdict(p) for p in phases],
        "baselines": [asdict(b) for b in baselines],
        "aggregator_vs_put_produce": {
            p.phase: round(p.aggregator_cpu_ms_per_frame / max(1e-9, paced), 2) for p in phases
        },
    }
    click.echo(format_report(report))
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2) + "\n")


def format_report(report: dict[str, Any]) -> str:
    """The human-readable report of a run."""
    lines = [f"ingest benchmark: 1280x720 JPEG, mean {report['payload_kib_mean']:.0f} KiB"]
    for p in report["phases"]:
        drops = p["capture_dropped"] + p["aggregator_dropped"] + p["seq_gaps"]
        lines += [
            f"[{p['phase']}] {p['cameras']} cameras x {p['fps_per_camera']:g} fps, "
            f"measured {p['seconds']:.0f}s",
            f"  sustained          {p['sustained_fps']:.1f} frames/s to Kafka "
            f"(offered {p['offered_fps']:g}"
            + (f", captured {p['captured_fps']:.1f})" if p["captured_fps"] is not None else ")"),
            f"  capture->FrameRef  p50 {p['latency_p50_ms']} ms, p99 {p['latency_p99_ms']} ms, "
            f"max {p['latency_max_ms']} ms (S3 put mean {p['s3_put_mean_ms']} ms, "
            f"broker ack mean {p['produce_ack_mean_ms']} ms; over 1 s: "
            f"{p['s3_puts_over_1s']:g} puts, {p['produce_acks_over_1s']:g} acks)",
            f"  aggregator CPU     {p['aggregator_cpu_ms_per_frame']:.2f} ms/frame "
            f"({p['aggregator_cpu_percent']:.0f}% of a core)",
        ]
        if p["capture_cpu_ms_per_frame"] is not None:
            lines.append(
                f"  capture CPU        {p['capture_cpu_ms_per_frame']:.2f} ms/frame "
                "(decode + JPEG encode + send)"
            )
        lines.append(
            f"  drops              {drops:g} (capture {p['capture_dropped']:g}, aggregator "
            f"{p['aggregator_dropped']:g}, sequence gaps {p['seq_gaps']})"
        )
    lines.append("bare baselines, same payloads, one thread:")
    for b in report["baselines"]:
        lines.append(
            f"  {b['name']:<38} {b['frames_per_s']:>8.1f} frames/s  "
            f"{b['cpu_ms_per_frame']:.2f} ms CPU/frame"
        )
    for phase, ratio in report["aggregator_vs_put_produce"].items():
        lines.append(
            f"aggregator CPU/frame [{phase}] = {ratio:.2f} x paced bare put+produce (goal <= 1.3)"
        )
    return "\n".join(lines)
