"""The ``video`` job: recorded video of facility cameras through a flow's estimators and fusion.

Each camera's video is decoded and decimated to the job's fps by frame time; at every tick
the frames of all cameras are JPEG-encoded at the camera's quality and stored (S3, the job's
``frames/`` prefix, with a FrameRef like live frames), run through the flow's estimation chain
(detector, position core, plate reader: :class:`EstimationChain`, the same chain ``eval
fusion --detector yolo`` measures) and fused by the flow's fusion core. Results, in the jobs
bucket under ``jobs/<id>/``:

- ``timeline.jsonl``: the facility state after every tick (FacilityState JSON per line);
- ``tracks.jsonl``: per camera, ByteTrack object tracks over the detector's boxes;
- ``summary.json``: what was processed and the final state.

**Checkpoints.** Every ``DEPOTWATCH_JOBS__VIDEO_CHECKPOINT_TICKS`` ticks the estimates of those
ticks are stored (``chunks/NNNNN.jsonl``) and the job's checkpoint says how many ticks are
done. A new attempt (the worker died) re-applies the stored estimates to fusion and the
trackers (no detection, seconds) and continues decoding from the next tick.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from schemas.estimates import IdentityEstimate, PositionEstimate
from schemas.facility import ConfigError, FacilityConfig, load_facility
from schemas.facility_state import FacilityState
from schemas.frames import FrameRef
from schemas.jobs import JobResult, VideoJob
from services.jobs.requests import request_problems
from services.jobs.runner import JobContext, JobInputError
from services.jobs.tracks import CameraTracker
from services.runtime.storage import ObjectMissingError, ObjectStore, StorageError

Estimate = PositionEstimate | IdentityEstimate


class VideoFrames:
    """Frames of one video at chosen times (decoding forward only)."""

    def __init__(self, camera_id: str, path: Path, fallback_fps: float) -> None:
        self.camera_id = camera_id
        self.capture = cv2.VideoCapture(str(path))
        if not self.capture.isOpened():
            raise JobInputError(
                f"camera {camera_id}: {path.name} is not a video this worker can decode; "
                "send an MP4/MKV/AVI (H.264, MPEG-4 or MJPEG)"
            )
        fps = float(self.capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0.1 <= fps <= 240 else fallback_fps
        count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.duration_s = count / self.fps if count > 0 else math.inf
        self._index = -1
        self._frame: np.ndarray | None = None
        self.ended = False

    def at(self, t: float) -> np.ndarray | None:
        """The last frame shown at ``t`` seconds from the start (None after the end)."""
        wanted = math.floor(t * self.fps + 1e-6)
        while self._index < wanted and not self.ended:
            if not self.capture.grab():
                self.ended = True
                break
            self._index += 1
            if self._index == wanted:
                ok, frame = self.capture.retrieve()
                self._frame = frame if ok else None
        if self._index < wanted:
            return None
        return self._frame

    def skip_to(self, t: float) -> None:
        """Position so that the next :meth:`at` call is for a time after ``t`` (resume)."""
        self.at(t)

    def close(self) -> None:
        self.capture.release()


def _local_video(ctx: JobContext, camera_id: str, source: str, scratch: Path) -> Path:
    """A readable local file for ``source`` (downloaded from S3 when needed)."""
    if source.startswith("file://"):
        path = Path(source.removeprefix("file://"))
        if not path.is_file():
            raise JobInputError(
                f"camera {camera_id}: {path} does not exist on worker; give a path every "
                "worker can read, or upload the video (PUT /api/v1/videos/{name})"
            )
        return path
    bucket, _, key = source.removeprefix("s3://").partition("/")
    store = ObjectStore(ctx.settings.s3.model_copy(update={"bucket": bucket}), timeout_s=120.0)
    path = scratch / f"{camera_id}{Path(key).suffix or '.mp4'}"
    try:
        store.get_file(key, path)
    except ObjectMissingError:
        raise JobInputError(f"camera {camera_id}: {source} does not exist") from None
    except StorageError as exc:
        raise JobInputError(f"camera {camera_id}: {source} could not be read ({exc})") from None
    return path


def _encode_estimate(est: Estimate) -> dict[str, Any]:
    kind = "position" if isinstance(est, PositionEstimate) else "identity"
    return {"type": kind, "estimate": json.loads(est.model_dump_json())}


def _decode_estimate(doc: dict[str, Any]) -> Estimate:
    if doc["type"] == "position":
        return PositionEstimate.model_validate(doc["estimate"])
    return IdentityEstimate.model_validate(doc["estimate"])


class VideoRun:
    """The fusion and tracking state of one video job, fed tick by tick."""

    def __init__(self, facility: FacilityConfig, flow: str) -> None:
        from services.state_estimator.fusion import FusionConfig, FusionCore, FusionState

        settings = facility.flows[flow].state_estimator
        self.core = FusionCore(FusionConfig.from_facility(facility, flow, settings))
        self.state = FusionState()
        self.timeline: list[FacilityState] = []
        self.trackers: dict[str, CameraTracker] = {}
        self.estimates = 0
        self.accepted = 0

    def apply(self, at: datetime, estimates: list[Estimate]) -> None:
        """One tick's estimates: fused in order, boxes tracked, the state recorded."""
        for est in estimates:
            self.estimates += 1
            self.state, accepted = self.core.apply(self.state, est)
            self.accepted += int(accepted)
            if isinstance(est, PositionEstimate):
                tracker = self.trackers.get(est.camera_id)
                if tracker is None:
                    tracker = self.trackers[est.camera_id] = CameraTracker(est.camera_id)
                tracker.update(est.frame.seq, est.frame.captured_at, est.detections)
        self.timeline.append(self.core.render(self.state, as_of=at))


def run_video(ctx: JobContext) -> JobResult:
    """Run a video job (see the module doc)."""
    from services.evaluation.estimation_chain import EstimationChain, real_estimators
    from services.position_estimator.detector import WeightsError
    from services.runtime.estimator_service import EstimatorConfigError

    request = VideoJob.model_validate(ctx.request)
    config_path = ctx.settings.facility_config
    try:
        facility = load_facility(config_path)
    except ConfigError as exc:
        raise JobInputError(str(exc)) from None
    problems = request_problems(request, facility, lambda bucket, key: True)
    if problems:
        raise JobInputError("; ".join(problems))
    try:
        detector, recogniser = real_estimators(facility, config_path, request.flow, ctx.settings)
    except (EstimatorConfigError, WeightsError) as exc:
        raise JobInputError(str(exc)) from None
    chain = EstimationChain(facility, request.flow, detector, recogniser, service="video-job")
    start_at = request.start_at or ctx.job.started_at or ctx.job.created_at
    run = VideoRun(facility, request.flow)

    with tempfile.TemporaryDirectory(prefix="depotwatch-video-") as scratch:
        videos: dict[str, VideoFrames] = {}
        try:
            for cam, source in request.videos.items():
                path = _local_video(ctx, cam, source, Path(scratch))
                videos[cam] = VideoFrames(cam, path, facility.camera(cam).fps)
            duration = max(v.duration_s for v in videos.values())
            if request.max_seconds is not None:
                duration = min(duration, request.max_seconds)
            if not math.isfinite(duration):
                raise JobInputError("no video tells its length; set max_seconds in the request")
            ticks = max(1, math.floor(duration * request.fps))
            done, frames_before = _resume(ctx, run, start_at, request.fps, videos)
            frames = frames_before + _process(
                ctx, run, chain, facility, request, videos, start_at, done, ticks
            )
        finally:
            for v in videos.values():
                v.close()

    return _results(ctx, run, request, ticks, frames, done)


def _resume(
    ctx: JobContext,
    run: VideoRun,
    start_at: datetime,
    fps: float,
    videos: dict[str, VideoFrames],
) -> tuple[int, int]:
    """Re-apply the stored chunks of a previous attempt; returns (ticks, frames) done."""
    checkpoint = ctx.checkpoint or {}
    done, frames = int(checkpoint.get("ticks_done", 0)), 0
    for chunk in range(int(checkpoint.get("chunks", 0))):
        lines = ctx.results.get(ctx.key(f"chunks/{chunk:05d}.jsonl")).decode().splitlines()
        for line in lines:
            tick = json.loads(line)
            at = start_at + timedelta(seconds=tick["tick"] / fps)
            run.apply(at, [_decode_estimate(e) for e in tick["estimates"]])
            frames += int(tick.get("frames", 0))
    if done:
        for v in videos.values():
            v.skip_to((done - 1) / fps)
    return done, frames


def _process(
    ctx: JobContext,
    run: VideoRun,
    chain: Any,
    facility: FacilityConfig,
    request: VideoJob,
    videos: dict[str, VideoFrames],
    start_at: datetime,
    first_tick: int,
    ticks: int,
) -> int:
    """Decode, store, estimate and fuse ticks ``first_tick..ticks``; returns frames done."""
    frames_done = 0
    chunk_lines: list[str] = []
    chunks = (ctx.checkpoint or {}).get("chunks", 0)
    bucket = ctx.results.bucket
    for tick in range(first_tick, ticks):
        t = tick / request.fps
        at = start_at + timedelta(seconds=t)
        batch: list[tuple[FrameRef, bytes]] = []
        for cam_id, video in videos.items():
            image = video.at(t)
            if image is None:
                continue
            cam = facility.camera(cam_id)
            ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, cam.jpeg_quality])
            if not ok:
                continue
            jpeg = encoded.tobytes()
            key = ctx.key(f"frames/{cam_id}/{tick:08d}.jpg")
            ctx.results.put(key, jpeg, "image/jpeg")
            ref = FrameRef(
                camera_id=cam_id,
                seq=tick,
                captured_at=at,
                bucket=bucket,
                key=key,
                width=int(image.shape[1]),
                height=int(image.shape[0]),
                size=len(jpeg),
                sha256=hashlib.sha256(jpeg).hexdigest(),
            )
            batch.append((ref, jpeg))
        estimates = chain(batch) if batch else []
        frames_done += len(batch)
        run.apply(at, estimates)
        chunk_lines.append(
            json.dumps(
                {
                    "tick": tick,
                    "frames": len(batch),
                    "estimates": [_encode_estimate(e) for e in estimates],
                }
            )
        )
        pct = 100.0 * (tick + 1) / ticks
        message = f"{tick + 1}/{ticks} ticks ({t:.0f} s of video)"
        if len(chunk_lines) >= ctx.settings.jobs.video_checkpoint_ticks or tick + 1 == ticks:
            ctx.put(f"chunks/{chunks:05d}.jsonl", ("\n".join(chunk_lines) + "\n").encode())
            chunks += 1
            chunk_lines = []
            ctx.progress(pct, message, checkpoint={"ticks_done": tick + 1, "chunks": chunks})
        else:
            ctx.progress(pct, message)
    return frames_done


def _results(
    ctx: JobContext, run: VideoRun, request: VideoJob, ticks: int, frames: int, resumed_at: int
) -> JobResult:
    started = time.monotonic()
    timeline = "".join(s.model_dump_json() + "\n" for s in run.timeline).encode()
    tracks = [t.as_dict() for tr in run.trackers.values() for t in tr.tracks.values()]
    tracks_doc = "".join(json.dumps(t) + "\n" for t in tracks).encode()
    final = run.timeline[-1] if run.timeline else None
    summary: dict[str, Any] = {
        "flow": request.flow,
        "cameras": sorted(request.videos),
        "fps": request.fps,
        "ticks": ticks,
        "video_s": round(ticks / request.fps, 2),
        "frames": frames,
        "resumed_at_tick": resumed_at,
        "estimates": run.estimates,
        "accepted_estimates": run.accepted,
        "object_tracks": len(tracks),
        "locomotives": (
            {t.track_id: len(t.locomotives) for t in final.tracks} if final is not None else {}
        ),
    }
    artifacts = {
        "timeline": ctx.put("timeline.jsonl", timeline, "application/x-ndjson"),
        "tracks": ctx.put("tracks.jsonl", tracks_doc, "application/x-ndjson"),
    }
    summary["write_s"] = round(time.monotonic() - started, 3)
    artifacts["summary"] = ctx.put(
        "summary.json", json.dumps(summary, indent=2).encode(), "application/json"
    )
    return JobResult(summary=summary, artifacts=artifacts)
