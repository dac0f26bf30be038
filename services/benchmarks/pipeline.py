"""Sizing: the whole pipeline at N cameras x F fps, where the CPU and the time go.

Each camera's view is rendered once and encoded as H.264 at the stream's frame rate (15 fps, a
keyframe every 2 s, no B-frames; cached in ``<data dir>/clips``). With ``--streams rtsp`` (the
default) the clips are served over RTSP by the GStreamer server, which only packetises them
(:class:`services.simulator.clips.ClipStreams`); with ``--streams file`` the cameras' sources
point at the files, which capture paces to their frame rate and loops. Either way every camera
costs what a real one costs (decode every frame, keep F a second) and nothing is rendered or
encoded while the pipeline runs; the RTSP server's own CPU is shown apart (it is the test bed,
not the pipeline). Cameras beyond the facility's posed ones replay a posed camera's stream under
another id.

``depotwatch up --no-sim`` then runs the real services on the embedded S3 and broker. After a
warm-up, over ``--duration`` seconds, it samples each process's CPU and the services' counters
and collects the facility states; then it measures, in this process, the bare-library floor of
the same work on the same clip. It prints, per stage: share of a core, CPU ms per stored frame,
and the floor beside it; frames stored and skipped; capture -> state latency p50/p95/p99 and
each stage's p50/p95 (from the stage times every change carries). ``--find-max`` adds cameras
``--step`` at a time until p95 exceeds the goal or frames are skipped.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import yaml

from services.benchmarks.ingest_rig import metric_sum, sample_labels, scrape, tree_cpu_seconds
from services.runtime.stats import percentile

LATENCY_GOAL_S = 1.0
MIN_CHANGES = 30
"""Fewer state changes than this in a window: the latency figures are flagged as thin."""
STREAM_FPS = 15
CLIP_SECONDS = 30.0

STAGE_ORDER = (
    "capture",
    "aggregator",
    "SeaweedFS",
    "Tansu",
    "Redis",
    "position-estimator",
    "plate-ocr",
    "state-estimator",
    "other",
)


def stage_of(service: str) -> str:
    """The stage a service or infrastructure process belongs to (``capture/cam-s1`` ->
    ``capture``, ``position-estimator/prod`` -> ``position-estimator``)."""
    base = service.split("/", 1)[0]
    return base if base in STAGE_ORDER else "other"


TEST_BED = "RTSP server (test bed)"
"""The clip server's row: shown, not counted in the pipeline's total."""


def bench_cameras(
    cameras: Sequence[Mapping[str, Any]], n: int, fps: float, sources: Mapping[str, str]
) -> list[dict[str, Any]]:
    """``n`` camera entries streaming ``sources`` (posed camera id -> its clip's URL): the
    posed cameras in turn, then again under ids ``<id>-x2``, ``<id>-x3``... (the same view,
    decoded and estimated again)."""
    posed = [c for c in cameras if c.get("pose") and c["id"] in sources]
    if not posed:
        raise ValueError("the facility has no posed camera with a clip to stream")
    out = []
    for i in range(n):
        base = posed[i % len(posed)]
        copy = i // len(posed)
        out.append(
            {
                **base,
                "id": base["id"] if copy == 0 else f"{base['id']}-x{copy + 1}",
                "source": sources[base["id"]],
                "fps": fps,
                "enabled": True,
            }
        )
    return out


@dataclass(frozen=True)
class Floor:
    """The bare library doing one part of a stage's work: CPU ms per stored frame."""

    stage: str
    what: str
    ms: float


def floor_for(stage: str, floors: Sequence[Floor] | None) -> str:
    """The floor column of one stage: the sum of its parts, and what they are."""
    parts = [f for f in floors or () if f.stage == stage]
    if not parts:
        return "-"
    return f"{sum(f.ms for f in parts):6.1f}  " + " + ".join(f.what for f in parts)


@dataclass
class RunFigures:
    """What one run at ``cameras`` x ``fps`` measured."""

    cameras: int
    fps: float
    flows: list[str]
    seconds: float
    cpu_s: dict[str, float]
    """Stage -> CPU seconds over the window (all its processes)."""
    stored: float
    skipped: dict[str, float]
    """Estimator service -> frames skipped (live mode) over the window."""
    latencies: list[float]
    stages: dict[str, list[float]] = field(default_factory=dict)
    processed: dict[str, float] = field(default_factory=dict)
    """Estimator service -> frames it estimated over the window."""
    restarts: dict[str, int] = field(default_factory=dict)
    """Service -> restarts by the supervisor over the window (a restart replays a backlog)."""
    streams: str = "streams"
    """What the cameras read: "RTSP streams" or "files"."""
    s3_requests: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    """(bucket, request type) -> (requests, seconds spent serving them) over the window, from
    SeaweedFS's own metrics."""
    s3_roles: dict[str, str] = field(default_factory=dict)
    """Bucket -> what it holds, for the report ("frames", "broker log")."""
    s3_note: str = ""
    """Why there is no split of SeaweedFS's requests (its metrics did not answer)."""

    def p(self, q: float) -> float | None:
        return percentile(self.latencies, q)

    @property
    def held(self) -> bool:
        """p95 within the goal and no frame skipped."""
        p95 = self.p(0.95)
        return p95 is not None and p95 <= LATENCY_GOAL_S and sum(self.skipped.values()) == 0

    def slowest_stage(self) -> str | None:
        """The stage with the largest p95 (what holds the latency back)."""
        p95 = {name: percentile(v, 0.95) or 0.0 for name, v in self.stages.items() if v}
        return max(p95, key=lambda k: p95[k]) if p95 else None


S3_SECONDS = "SeaweedFS_s3_request_seconds"


def _s3_totals(samples: Mapping[str, float]) -> dict[tuple[str, str], tuple[float, float]]:
    """(bucket, type) -> (requests, seconds) so far, summed over any other label."""
    out: dict[tuple[str, str], tuple[float, float]] = {}
    for key, value in samples.items():
        name, labels = sample_labels(key)
        if name not in (f"{S3_SECONDS}_count", f"{S3_SECONDS}_sum"):
            continue
        where = (labels.get("bucket", ""), labels.get("type", ""))
        n, t = out.get(where, (0.0, 0.0))
        out[where] = (n + value, t) if name.endswith("_count") else (n, t + value)
    return out


def s3_requests(
    before: Mapping[str, float], after: Mapping[str, float]
) -> dict[tuple[str, str], tuple[float, float]]:
    """SeaweedFS's requests over a window from two scrapes of its metrics: (bucket, type) ->
    (requests, seconds spent serving them). A counter that went down (a restart) counts from
    zero."""
    then = _s3_totals(before)
    out: dict[tuple[str, str], tuple[float, float]] = {}
    for where, (count, total) in _s3_totals(after).items():
        c0, t0 = then.get(where, (0.0, 0.0))
        n, t = (count - c0, total - t0) if count >= c0 else (count, total)
        if n > 0:
            out[where] = (n, t)
    return out


def s3_lines(
    requests: Mapping[tuple[str, str], tuple[float, float]],
    roles: Mapping[str, str],
    seconds: float,
) -> list[str]:
    """What SeaweedFS's CPU served: requests a second and share of its request time, per
    bucket (frames, the broker's log) and request type."""
    if not requests or seconds <= 0:
        return []
    n_all = sum(n for n, _ in requests.values())
    t_all = sum(t for _, t in requests.values()) or 1.0
    lines = [f"SeaweedFS requests, {n_all / seconds:.0f}/s in all (share of requests / of time):"]
    by_bucket: dict[str, dict[str, tuple[float, float]]] = {}
    for (bucket, kind), counted in requests.items():
        by_bucket.setdefault(bucket, {})[kind] = counted
    totals = {
        bucket: (sum(c for c, _ in mine.values()), sum(x for _, x in mine.values()))
        for bucket, mine in by_bucket.items()
    }
    for bucket in sorted(by_bucket, key=lambda b: -totals[b][0]):
        mine, (n, t) = by_bucket[bucket], totals[bucket]
        kinds = ", ".join(
            f"{k} {c / seconds:.1f}/s"
            for k, (c, _) in sorted(mine.items(), key=lambda kv: -kv[1][0])
            if c / seconds >= 0.05
        )
        role = roles.get(bucket, "other")
        lines.append(
            f"  {role:10} {n / seconds:6.1f}/s {100 * n / n_all:4.0f}% / {100 * t / t_all:3.0f}%"
            f"  bucket {bucket or '(none)'}: {kinds}"
        )
    return lines


def backlog_notes(run: RunFigures) -> list[str]:
    """A line per estimator that disposed of clearly more frames than were stored in the
    window: it was still working off what waited when the window began."""
    notes = []
    for name in sorted(set(run.processed) | set(run.skipped)):
        handled = run.processed.get(name, 0.0) + run.skipped.get(name, 0.0)
        if run.stored and handled > 1.1 * run.stored:
            notes.append(
                f"note: {name} handled {handled:.0f} frames while {run.stored:.0f} were stored: "
                "it was still working off a backlog from the warm-up (try a longer --warmup)"
            )
    return notes


def report(run: RunFigures, floors: Sequence[Floor] | None) -> list[str]:
    """The table and figures of one run."""
    offered = run.cameras * run.fps
    lines = [
        f"{run.cameras} cameras x {run.fps:g} fps from {STREAM_FPS} fps H.264 {run.streams}, flows "
        f"{', '.join(run.flows)}, {run.seconds:.0f} s measured",
        f"frames stored {run.stored / run.seconds:.2f}/s (offered {offered:g}/s); skipped: "
        + (", ".join(f"{k} {v:.0f}" for k, v in sorted(run.skipped.items())) or "none")
        + "; estimated: "
        + (", ".join(f"{k} {v:.0f}" for k, v in sorted(run.processed.items())) or "none")
        + "; restarts: "
        + (", ".join(f"{k} {v}" for k, v in sorted(run.restarts.items())) or "none"),
        *backlog_notes(run),
        *(["note: a restarted service's CPU counts only from its restart"] if run.restarts else []),
        *(
            [f"note: floors are one flow's work; estimator stages here run {len(run.flows)}"]
            if floors and len(run.flows) > 1
            else []
        ),
        "",
        f"{'stage':20} {'CPU':>6} {'ms/frame':>9}  floor ms/frame (bare library, same work)",
        f"{'-' * 20} {'-' * 6} {'-' * 9}  {'-' * 40}",
    ]
    total = 0.0

    def row(stage: str, cpu: float, floor: str) -> str:
        per_frame = 1000 * cpu / run.stored if run.stored else float("nan")
        return f"{stage:20} {100 * cpu / run.seconds:5.0f}% {per_frame:9.1f}  {floor}"

    for stage in STAGE_ORDER:
        if stage not in run.cpu_s:
            continue
        total += run.cpu_s[stage]
        lines.append(row(stage, run.cpu_s[stage], floor_for(stage, floors)))
    per_total = 1000 * total / run.stored if run.stored else float("nan")
    floor_total = f"{sum(f.ms for f in floors):6.1f}" if floors else "     -"
    lines.append(
        f"{'total':20} {100 * total / run.seconds:5.0f}% {per_total:9.1f}  {floor_total}"
        f"  ({os.cpu_count() or 1} cores: {100 * (os.cpu_count() or 1)}%)"
    )
    if TEST_BED in run.cpu_s:
        lines.append(row(TEST_BED, run.cpu_s[TEST_BED], "(not in the total: the cameras)"))
    split = s3_lines(run.s3_requests, run.s3_roles, run.seconds)
    if split or run.s3_note:
        lines += ["", *(split or [run.s3_note])]
    lines.append("")
    p50, p95, p99 = run.p(0.5), run.p(0.95), run.p(0.99)
    if p50 is None or p95 is None or p99 is None:
        lines.append("capture -> state latency: no change published in the window (MISSED)")
        return lines
    if len(run.latencies) < MIN_CHANGES:
        lines.append(
            f"note: only {len(run.latencies)} state changes in the window: the clips show little "
            "movement, so the latency figures rest on few samples (pick a --clip-start or "
            "--scenario where locomotives move)"
        )
    verdict = "met" if run.held else "MISSED"
    lines.append(
        f"capture -> state latency over {len(run.latencies)} changes: p50 {p50:.2f} s, "
        f"p95 {p95:.2f} s, p99 {p99:.2f} s (goal p95 <= {LATENCY_GOAL_S:g} s and 0 skipped: "
        f"{verdict})"
    )
    if run.stages:
        parts = [
            f"{name} {percentile(v, 0.5) or 0:.2f} / {percentile(v, 0.95) or 0:.2f}"
            for name, v in run.stages.items()
        ]
        lines.append("  by stage, p50 / p95 s: " + ", ".join(parts))
        slowest = run.slowest_stage()
        if not run.held and slowest is not None:
            lines.append(f"  held back most by: {slowest}")
    return lines


def media_floors(
    clip: Path,
    fps: float,
    jpeg_quality: int,
    weights: Path,
    imgsz: int,
    batch: int,
    device: str,
) -> tuple[list[Floor], list[bytes]]:
    """cv2 (FFmpeg) decode, JPEG encode and reduced decode, bare ultralytics, on the clip.

    Returns the floors and the JPEGs (the frames a camera at ``fps`` keeps).
    """
    import cv2
    import numpy as np

    from services.position_estimator.detector import YoloDetector
    from services.runtime.frames import REDUCED_DECODE, decode_reduction

    every = max(1, round(STREAM_FPS / fps))
    kept: list[Any] = []  # the frames a camera at ``fps`` keeps (others are dropped at once)
    decoded = 0
    started = time.process_time()
    cap = cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG)  # what capture reads streams with
    try:
        while cap.grab():  # every frame decoded, only the kept ones converted to BGR
            if decoded % every == 0:
                ok, image = cap.retrieve()
                if ok and len(kept) < 48:
                    kept.append(image)
            decoded += 1
    finally:
        cap.release()
    decode_ms = 1000 * (time.process_time() - started) / max(1, decoded)
    if not kept:
        raise click.ClickException(f"no frame could be decoded from {clip}")
    started = time.process_time()
    jpegs = [
        bytes(cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])[1]) for f in kept
    ]
    encode_ms = 1000 * (time.process_time() - started) / len(kept)
    h, w = kept[0].shape[:2]
    flag = REDUCED_DECODE[decode_reduction(w, h, imgsz)]
    started = time.process_time()
    images = [np.asarray(cv2.imdecode(np.frombuffer(j, np.uint8), flag)) for j in jpegs]
    jpeg_decode_ms = 1000 * (time.process_time() - started) / len(images)
    detector = YoloDetector(weights, imgsz, 0.35, device, batch)
    detector.warm_up()
    model = detector._model  # the bare loop calls ultralytics directly
    started = time.process_time()
    for i in range(0, len(images), batch):
        model.predict(images[i : i + batch], imgsz=imgsz, device=device, verbose=False)
    inference_ms = 1000 * (time.process_time() - started) / len(images)
    ratio = STREAM_FPS / fps
    return [
        Floor("capture", f"cv2 H.264 decode x{ratio:g}", decode_ms * ratio),
        Floor("capture", "JPEG encode", encode_ms),
        Floor("position-estimator", "JPEG decode", jpeg_decode_ms),
        Floor("position-estimator", f"bare YOLO (batch {batch})", inference_ms),
    ], jpegs


def store_floors(jpegs: Sequence[bytes], work: Path, frames: int = 200) -> list[Floor]:
    """Bare minio put + confluent produce, then minio get, on a fresh embedded S3 and broker;
    the client's CPU and the servers' CPU per frame (their share of the same work)."""
    from services.benchmarks.ingest import BASELINE_WARM, baseline_put_produce
    from services.infra.embedded import EmbeddedInfra, settings_on_free_ports
    from services.runtime.storage import ObjectStore

    settings = settings_on_free_ports(work)
    stack = EmbeddedInfra(settings)
    try:
        stack.up()
        client = stack.client_settings
        pids = {c.component: c.pid for c in stack.status().components if c.pid}

        def servers() -> dict[str, float]:
            return {name: tree_cpu_seconds(pid) for name, pid in pids.items()}

        before = servers()
        put = baseline_put_produce(client, list(jpegs), frames, None, prefix="floor")
        after_put = servers()
        store = ObjectStore(client.s3)
        started = time.process_time()
        for i in range(BASELINE_WARM, BASELINE_WARM + frames):
            store.get(f"floor/{i:06d}.jpg")
        get_ms = 1000 * (time.process_time() - started) / frames
        after_get = servers()
    finally:
        stack.down()

    def server_ms(name: str, a: Mapping[str, float], b: Mapping[str, float], n: int) -> float:
        return 1000 * (b.get(name, 0.0) - a.get(name, 0.0)) / n

    put_frames = frames + BASELINE_WARM  # the servers' CPU covers the warm-up frames too

    return [
        Floor("aggregator", "minio put + confluent produce (1 message)", put.cpu_ms_per_frame),
        Floor(
            "SeaweedFS", "serving 1 put (+ its log)", server_ms("s3", before, after_put, put_frames)
        ),
        Floor("SeaweedFS", "serving 1 get", server_ms("s3", after_put, after_get, frames)),
        Floor("Tansu", "serving 1 produce", server_ms("kafka", before, after_put, put_frames)),
        Floor("position-estimator", "minio get", get_ms),
    ]


def fusion_floor(facility: Any, scenario: Any, seed: int, fps: float) -> Floor:
    """The fusion core in-process (no Faust, no broker) on modelled estimates of the same
    scenario and cameras: CPU per stored frame."""
    from services.evaluation.fusion_eval import DetectorModel, fuse, modelled_run

    run = modelled_run(facility, scenario, seed, DetectorModel(), fps=fps)
    fused = fuse(facility, run.arrivals)
    frames = max(1, len(run.truths) * len(facility.enabled_cameras))
    return Floor("state-estimator", "fusion core in-process", 1000 * fused.cpu_s / frames)


def _sample(pipe: Any) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """CPU seconds so far per stage, and each service's counters."""
    cpu: dict[str, float] = {}
    metrics: dict[str, dict[str, float]] = {}
    for svc in pipe.services():
        if svc.get("pid"):
            stage = stage_of(svc["name"])
            cpu[stage] = cpu.get(stage, 0.0) + tree_cpu_seconds(int(svc["pid"]))
        if svc.get("metrics_port"):
            metrics[svc["name"]] = scrape(int(svc["metrics_port"]))
    for c in pipe.infra.status().components:
        if c.pid:
            name = {"s3": "SeaweedFS", "kafka": "Tansu", "redis": "Redis"}[c.component]
            cpu[name] = cpu.get(name, 0.0) + tree_cpu_seconds(c.pid)
    metrics["SeaweedFS"] = scrape(pipe.infra.infra.weed_metrics_port)
    return cpu, metrics


def _delta(
    m0: Mapping[str, Mapping[str, float]], m1: Mapping[str, Mapping[str, float]], name: str
) -> dict[str, float]:
    """Each service's counter increase over the window; a counter that went down was reset by
    a restart, and counts from zero."""
    out = {}
    for svc in m1:
        now, then = metric_sum(m1[svc], name), metric_sum(m0.get(svc, {}), name)
        if now > 0:
            out[svc] = now - then if now >= then else now
    return out


def run_once(
    base: dict[str, Any],
    cameras: int,
    fps: float,
    flows: list[str],
    clips: Mapping[str, Path],
    duration_s: float,
    warmup_s: float,
    work: Path,
    say: Callable[[str], None],
    streams: str = "rtsp",
    infra: Mapping[str, Any] | None = None,
) -> RunFigures:
    """One run of ``depotwatch up --no-sim`` at ``cameras`` x ``fps``, the cameras reading
    the clips over RTSP (``streams="rtsp"``) or from the files (``"file"``)."""
    from schemas.facility_state import FacilityState
    from services.benchmarks.faults import Pipeline, wait_until
    from services.evaluation.pipeline import collect_live, pipeline_figures
    from services.simulator.clips import ClipStreams
    from services.simulator.serve import RtspServerError

    server = ClipStreams(clips) if streams == "rtsp" else None
    if server is not None:
        try:
            server.start()
        except RtspServerError as exc:
            raise click.ClickException(f"{exc}; or run with --streams file") from None
        sources = {cam: server.url(cam) for cam in clips}
    else:
        sources = {cam: path.resolve().as_uri() for cam, path in clips.items()}
    config = dict(base)
    config["cameras"] = bench_cameras(base["cameras"], cameras, fps, sources)
    config["flows"] = {f: base["flows"][f] for f in flows}
    extra = ["--no-sim", *(a for f in flows[1:] for a in ("--flow", f))]

    def sample(pipe: Any) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        cpu, metrics = _sample(pipe)
        if server is not None and server.server is not None and server.server.pid:
            cpu[TEST_BED] = tree_cpu_seconds(server.server.pid)
        return cpu, metrics

    try:
        pipe = Pipeline(work, cameras, flows[0], config=config, extra_args=extra, infra=infra)
        try:
            if wait_until(lambda: pipe.infra.status().healthy, 120) is None:
                raise click.ClickException(f"the embedded infra did not start; see {pipe.log}")
            say(f"{cameras} cameras: up; warming up {warmup_s:g} s ...")
            time.sleep(warmup_s)
            kafka = pipe.infra.client_settings.kafka
            cpu0, m0 = sample(pipe)
            r0 = {svc["name"]: int(svc.get("restarts", 0)) for svc in pipe.services()}
            t0 = time.monotonic()
            topics = [FacilityState.topic_name(f) for f in flows]
            got = collect_live(kafka, topics, duration_s)
            cpu1, m1 = sample(pipe)
            r1 = {svc["name"]: int(svc.get("restarts", 0)) for svc in pipe.services()}
            seconds = time.monotonic() - t0
            if server is not None and not server.alive:
                raise click.ClickException("the RTSP clip server stopped during the run")
        finally:
            pipe.stop()
    finally:
        if server is not None:
            server.stop()
    states = [r for t in topics for r in got[t]]
    figures = pipeline_figures(states, [], warmup_s=0.0)
    weed0, weed1 = m0.get("SeaweedFS", {}), m1.get("SeaweedFS", {})
    answered = bool(weed0 and weed1)
    stored = sum(_delta(m0, m1, "depotwatch_aggregator_frames_stored_total").values())
    return RunFigures(
        cameras=cameras,
        fps=fps,
        flows=flows,
        seconds=seconds,
        cpu_s={k: max(0.0, cpu1.get(k, 0.0) - cpu0.get(k, 0.0)) for k in cpu1},
        stored=stored,
        skipped=_delta(m0, m1, "depotwatch_frames_skipped_total"),
        processed=_delta(m0, m1, "depotwatch_frames_processed_total"),
        restarts={k: n - r0.get(k, 0) for k, n in r1.items() if n > r0.get(k, 0)},
        latencies=figures.latencies_s,
        stages=dict(figures.stages_s),
        streams="RTSP streams" if streams == "rtsp" else "files",
        s3_requests=s3_requests(weed0, weed1) if answered else {},
        s3_note=""
        if answered
        else f"SeaweedFS requests: its metrics (port {pipe.infra.infra.weed_metrics_port}) did "
        "not answer at the start or the end of the window; no split",
        s3_roles={
            pipe.infra.settings.s3.bucket: "frames",
            pipe.infra.infra.broker_bucket: "broker log",
        },
    )


@click.command("pipeline")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default="facility.yaml",
    show_default=True,
    help="Facility config: its posed cameras are rendered, its flows run.",
)
@click.option(
    "--cameras",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="Cameras to run (beyond the posed ones, their clips again under other ids).",
)
@click.option(
    "--fps",
    type=click.FloatRange(0.1, STREAM_FPS),
    default=2.0,
    show_default=True,
    help=f"Frames a second each camera keeps from its {STREAM_FPS} fps stream.",
)
@click.option("--flows", default="prod", show_default=True, help="Comma-separated flows to run.")
@click.option(
    "--duration",
    type=click.FloatRange(10),
    default=60,
    show_default=True,
    help="Seconds measured per run.",
)
@click.option(
    "--warmup",
    type=click.FloatRange(0),
    default=30,
    show_default=True,
    help="Seconds after start before measuring (two flows want ~90 on 2 cores).",
)
@click.option("--scenario", default="depot-day", show_default=True, help="Scene of the clips.")
@click.option("--seed", type=int, default=1, show_default=True, help="Scenario seed.")
@click.option(
    "--clip-start",
    type=click.FloatRange(0),
    default=20,
    show_default=True,
    help="Seconds into the scenario where the clips start (depot-day: a locomotive starts "
    "moving in at 20 s, so the state changes and its latency can be measured).",
)
@click.option(
    "--find-max", is_flag=True, help="Add cameras --step at a time until the goal is missed."
)
@click.option(
    "--step", type=click.IntRange(1), default=4, show_default=True, help="Cameras added per run."
)
@click.option(
    "--floors/--no-floors",
    default=True,
    show_default=True,
    help="Measure the bare libraries on the same work (~30 s).",
)
@click.option(
    "--streams",
    type=click.Choice(["rtsp", "file"]),
    default="rtsp",
    show_default=True,
    help="How cameras read the clips: served over RTSP (packetised only, no encoding) or "
    "straight from the files.",
)
@click.option(
    "--clips-dir",
    type=click.Path(path_type=Path),
    default=Path(".depotwatch/clips"),
    show_default=True,
    help="Cache of the rendered, encoded camera clips.",
)
@click.option(
    "--broker-max-batches",
    type=click.IntRange(2),
    default=None,
    help="Batches the embedded broker keeps per partition (default: DEPOTWATCH_INFRA__BROKER_"
    "MAX_BATCHES or 3000). Every fetch lists a partition's batches, so the broker's "
    "cost grows with it until the cap: measure at steady state with a --warmup long enough "
    "to fill it.",
)
@click.option(
    "--broker-read-tail",
    type=click.IntRange(1),
    default=None,
    help="Batches the embedded broker keeps per partition of the estimates topics once their "
    "live groups have read them (default: DEPOTWATCH_INFRA__BROKER_READ_TAIL or 100); as many "
    "as --broker-max-batches measures the broker without it.",
)
def bench_command(
    config_path: Path,
    cameras: int,
    fps: float,
    flows: str,
    duration: float,
    warmup: float,
    scenario: str,
    seed: int,
    clip_start: float,
    find_max: bool,
    step: int,
    floors: bool,
    streams: str,
    clips_dir: Path,
    broker_max_batches: int | None,
    broker_read_tail: int | None,
) -> None:
    """Sizing: the whole pipeline at N cameras x F fps from pre-encoded 15 fps H.264 streams
    (served over RTSP, or read from the files with --streams file).

    Per stage: share of a core, CPU ms per stored frame beside the bare-library floor; frames
    skipped; capture -> facility-state latency p50/p95/p99 and by stage. --find-max: the most
    cameras that hold p95 <= 1 s with no skipped frame.
    """
    from schemas.facility import ConfigError, load_facility
    from services.benchmarks.estimator_bench import absolute_weights
    from services.runtime.settings import Settings
    from services.simulator.clips import cached_clips
    from services.simulator.world import ScenarioError, load_scenario

    try:
        facility = load_facility(config_path)
        wanted = [f.strip() for f in flows.split(",") if f.strip()]
        unknown = [f for f in wanted if f not in facility.flows]
        if not wanted or unknown:
            raise click.BadParameter(
                f"unknown flow(s) {unknown}; the config has {list(facility.flows)}",
                param_hint="--flows",
            )
        scene = load_scenario(scenario)
    except (ConfigError, ScenarioError) as exc:
        raise click.ClickException(str(exc)) from None
    base = yaml.safe_load(config_path.read_text())
    absolute_weights(base, config_path.resolve().parent)
    posed = [c for c in facility.cameras if c.pose is not None and c.calibrated]
    if not posed:
        raise click.ClickException("the facility has no posed camera to render a clip from")
    try:
        clips = cached_clips(
            facility, scene, seed, posed[:cameras], CLIP_SECONDS, STREAM_FPS, clips_dir,
            clip_start, click.echo,
        )  # fmt: skip
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None

    infra = Settings().infra
    cap = broker_max_batches or infra.broker_max_batches
    tail = broker_read_tail or infra.broker_read_tail
    click.echo(
        f"embedded broker: at most {cap} batches a partition (--broker-max-batches); of the"
        f" estimates topics, {tail} once read by their live groups (--broker-read-tail)"
    )
    runs: list[RunFigures] = []
    n = cameras
    with tempfile.TemporaryDirectory(prefix="depotwatch-bench-pipeline-") as tmp:
        while True:
            work = Path(tmp) / f"n{n}"
            work.mkdir()
            run = run_once(
                base, n, fps, wanted, clips, duration, warmup, work, click.echo, streams,
                {"broker_max_batches": cap, "broker_read_tail": tail},
            )  # fmt: skip
            runs.append(run)
            for line in report(run, None):
                click.echo(line)
            click.echo("")
            shutil.rmtree(work, ignore_errors=True)
            if not find_max or not run.held:
                break
            n += step

        floor_figures: list[Floor] | None = None
        if floors:
            click.echo("bare-library floors on the same clip, S3 and broker ...")
            floor_figures = []
            jpegs: list[bytes] = []
            settings = facility.flow(wanted[0]).position_estimator
            if settings is not None:
                media, jpegs = media_floors(
                    next(iter(clips.values())),
                    fps,
                    posed[0].jpeg_quality,
                    Path(base["flows"][wanted[0]]["position_estimator"]["weights"]),
                    settings.imgsz,
                    settings.max_batch,
                    Settings().device,
                )
                floor_figures += media
            if jpegs:
                floor_figures += store_floors(jpegs, Path(tmp) / "floors")
            floor_figures.append(fusion_floor(facility, scene, seed, fps))
    click.echo("")
    for line in report(runs[0], floor_figures):
        click.echo(line)
    if find_max:
        held = [r.cameras for r in runs if r.held]
        click.echo("")
        click.echo(
            f"find-max: {max(held)} cameras x {fps:g} fps held p95 <= {LATENCY_GOAL_S:g} s with "
            f"no skipped frame (tried {', '.join(str(r.cameras) for r in runs)})"
            if held
            else f"find-max: no camera count held the goal (tried {runs[0].cameras})"
        )
