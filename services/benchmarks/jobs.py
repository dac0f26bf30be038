"""Video job throughput: a `video` job on a real worker beside the offline estimation loop.

One simulator clip (every camera, MP4) is processed twice, one after the other on this
machine: (1) offline, in this process, the loop ``eval fusion --detector yolo`` runs (frames
JPEG-encoded, the flow's estimation chain, fusion), fed by decoding the clip instead of
rendering it; (2) as a ``video`` job: the embedded infra (S3, broker, Redis) on free ports, a
``depotwatch worker`` process, the job sent through the job engine; the job also stores every
frame in S3, tracks boxes, checkpoints and writes its results. Both include loading the model.
Prints frames/s of each, their ratio (issue 14's goal: job >= 0.8x offline) and both
timelines' accuracy against the clip's ground truth.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

GOAL_RATIO = 0.8


def _render(config_path: Path, scenario: str, seed: int, ticks: int, out: Path) -> None:
    from schemas.facility import load_facility
    from services.simulator.frames import FrameSource
    from services.simulator.serve import write_videos
    from services.simulator.world import load_scenario

    source = FrameSource(load_facility(config_path), load_scenario(scenario), seed)
    write_videos(source, out, ticks)


def _score(config_path: Path, clip: Path, states: list[Any]) -> dict[str, Any]:
    from schemas.facility import load_facility
    from schemas.ground_truth import GroundTruth
    from services.evaluation.compare import summarise

    truth = [
        GroundTruth.model_validate_json(line)
        for line in (clip / "ground_truth.jsonl").read_text().splitlines()
    ]
    lengths = {t.id: t.length_m for t in load_facility(config_path).tracks}
    return summarise(truth, states, max_skew_s=0.5, warmup_s=5, track_lengths=lengths).figures()


def offline(config_path: Path, clip: Path, flow: str, fps: float) -> tuple[int, float, list[Any]]:
    """The eval loop over the clip's frames: (frames, seconds, one state per tick)."""
    import cv2

    from schemas.facility import load_facility
    from schemas.frames import FrameRef
    from schemas.ground_truth import GroundTruth
    from services.evaluation.estimation_chain import EstimationChain, real_estimators
    from services.jobs.video import VideoFrames
    from services.runtime.settings import load_settings
    from services.state_estimator.fusion import FusionConfig, FusionCore, FusionState

    facility = load_facility(config_path)
    first = GroundTruth.model_validate_json(
        (clip / "ground_truth.jsonl").read_text().splitlines()[0]
    )
    started = time.perf_counter()
    detector, recogniser = real_estimators(facility, config_path, flow, load_settings())
    chain = EstimationChain(facility, flow, detector, recogniser)
    core = FusionCore(
        FusionConfig.from_facility(facility, flow, facility.flows[flow].state_estimator)
    )
    state = FusionState()
    videos = {
        p.stem: VideoFrames(p.stem, p, facility.camera(p.stem).fps)
        for p in sorted(clip.glob("*.mp4"))
    }
    ticks = int(min(v.duration_s for v in videos.values()) * fps)
    frames, states = 0, []
    for tick in range(ticks):
        at = first.at + timedelta(seconds=tick / fps)
        batch = []
        for cam, video in videos.items():
            image = video.at(tick / fps)
            if image is None:
                continue
            quality = facility.camera(cam).jpeg_quality
            jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
            ref = FrameRef(
                camera_id=cam,
                seq=tick,
                captured_at=at,
                bucket="offline",
                key=f"{cam}/{tick}.jpg",
                width=image.shape[1],
                height=image.shape[0],
                size=len(jpeg),
                sha256=hashlib.sha256(jpeg).hexdigest(),
            )
            batch.append((ref, jpeg))
        frames += len(batch)
        for est in chain(batch):
            state, _ = core.apply(state, est)
        states.append(core.render(state, as_of=at))
    return frames, time.perf_counter() - started, states


def as_job(
    config_path: Path, clip: Path, flow: str, fps: float, data_dir: Path
) -> tuple[dict[str, Any], list[Any]]:
    """The clip as a video job on a worker process; (job status, timeline states)."""
    from schemas.facility_state import FacilityState
    from schemas.ground_truth import GroundTruth
    from schemas.jobs import VideoJob
    from services.infra import EmbeddedInfra, settings_on_free_ports
    from services.jobs.engine import celery_app, submit
    from services.jobs.store import JobStore
    from services.runtime.storage import ObjectStore

    stack = EmbeddedInfra(settings_on_free_ports(data_dir), flows=[flow], die_with_parent=True)
    stack.up()
    s = stack.client_settings
    env = {
        **os.environ,
        "DEPOTWATCH_KAFKA__BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
        "DEPOTWATCH_S3__ENDPOINT": s.s3.endpoint,
        "DEPOTWATCH_JOBS__REDIS_URL": stack.redis_url,
        "DEPOTWATCH_FACILITY_CONFIG": str(config_path.resolve()),
        "DEPOTWATCH_LOG_LEVEL": "WARNING",
    }
    log = (data_dir / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "worker", "--name", "bench@local", "--no-gpu"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        store = JobStore.from_url(stack.redis_url)
        first = GroundTruth.model_validate_json(
            (clip / "ground_truth.jsonl").read_text().splitlines()[0]
        )
        videos = {p.stem: f"file://{p.resolve()}" for p in sorted(clip.glob("*.mp4"))}
        job = store.create(VideoJob(flow=flow, videos=videos, fps=fps, start_at=first.at))
        submit(celery_app(s.jobs), job)
        deadline = time.monotonic() + 3600
        while not (job := store.get(job.id)).finished:
            if worker.poll() is not None:
                raise click.ClickException(f"the worker exited; see {data_dir / 'worker.log'}")
            if time.monotonic() > deadline:
                raise click.ClickException("the job did not finish within an hour")
            time.sleep(0.5)
        if job.state != "succeeded" or job.result is None:
            raise click.ClickException(f"the job {job.state}: {job.error}")
        bucket, _, key = job.result.artifacts["timeline"].removeprefix("s3://").partition("/")
        raw = ObjectStore(s.s3.model_copy(update={"bucket": bucket})).get(key)
        states = [FacilityState.model_validate_json(x) for x in raw.decode().splitlines()]
        return json.loads(job.model_dump_json()), states
    finally:
        worker.terminate()
        worker.wait(60)
        stack.down()


@click.command("jobs")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default="facility.yaml")
@click.option("--scenario", default="test-dim", show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--ticks", type=click.IntRange(4), default=60, show_default=True, help="Clip length, ticks."
)
@click.option("--fps", type=float, default=2.0, show_default=True, help="Job frames/s per camera.")
@click.option("--flow", default="prod", show_default=True)
@click.option(
    "--clip",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="A clip written by `depotwatch sim render` (default: render one now).",
)
def bench_command(
    config_path: Path,
    scenario: str,
    seed: int,
    ticks: int,
    fps: float,
    flow: str,
    clip: Path | None,
) -> None:
    """Video job throughput beside the offline eval loop, on one clip."""
    with tempfile.TemporaryDirectory(prefix="depotwatch-bench-jobs-") as tmp:
        if clip is None:
            clip = Path(tmp) / "clip"
            click.echo(f"rendering {scenario} seed {seed}, {ticks} ticks, every camera ...")
            _render(config_path, scenario, seed, ticks, clip)
        click.echo("offline loop (decode, JPEG, estimation chain, fusion) ...")
        frames, seconds, offline_states = offline(config_path, clip, flow, fps)
        click.echo("video job on a worker (embedded S3, broker, Redis) ...")
        job, job_states = as_job(config_path, clip, flow, fps, Path(tmp) / "infra")
        cameras = len(list(clip.glob("*.mp4")))
        scores = {
            name: _score(config_path, clip, states)
            for name, states in (("offline", offline_states), ("job", job_states))
        }
    summary = job["result"]["summary"]
    started = _ts(job["started_at"])
    run_s = _ts(job["finished_at"]) - started
    e2e_s = _ts(job["finished_at"]) - _ts(job["created_at"])
    offline_fps = frames / seconds
    job_fps = summary["frames"] / run_s
    ratio = job_fps / offline_fps
    click.echo(f"clip: {cameras} cameras, {frames} frames at {fps:g} fps")
    click.echo(f"offline loop: {seconds:6.1f} s  {offline_fps:5.2f} frames/s")
    click.echo(
        f"video job:    {run_s:6.1f} s  {job_fps:5.2f} frames/s (worker start to end; "
        f"{e2e_s:.1f} s from submit)"
    )
    verdict = "met" if ratio >= GOAL_RATIO else "MISSED"
    click.echo(f"job / offline: {ratio:.2f}x (goal >= {GOAL_RATIO}x: {verdict})")
    for name, fig in scores.items():
        click.echo(
            f"accuracy {name:8} count per track {100 * (fig['count_rate'] or 0):.1f}%, "
            f"head/tail median {fig['median_error_m']} m, identity {fig['identity_rate']}"
        )


def _ts(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()
