"""The job kinds a worker runs: each a function ``(JobContext) -> JobResult``.

``video`` lives in :mod:`services.jobs.video`; ``replay``, ``score`` and ``train`` run the
code behind ``depotwatch replay``, ``depotwatch compare --from`` and ``depotwatch train``, with
progress and cancellation through the job context. Heavy imports (torch, OCR) happen when a job
of that kind runs, so a worker starts in about a second.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from schemas.facility import ConfigError, FacilityConfig, load_facility
from schemas.jobs import JobKind, JobResult, ReplayJob, ScoreJob, TrainJob
from services.jobs.runner import JobContext, JobInputError, KindRunner
from services.runtime.storage import ObjectMissingError, ObjectStore


def _facility(ctx: JobContext, flows: Sequence[str]) -> FacilityConfig:
    try:
        facility = load_facility(ctx.settings.facility_config)
    except ConfigError as exc:
        raise JobInputError(str(exc)) from None
    for flow in flows:
        if flow not in facility.flows:
            raise JobInputError(
                f"no flow {flow!r} in the facility (known: {', '.join(facility.flows)})"
            )
    return facility


def run_replay(ctx: JobContext) -> JobResult:
    """``depotwatch replay`` as a job: checkpoint = frames done (a new attempt skips them)."""
    from schemas.frames import FrameRef
    from services.evaluation.compare import read_range
    from services.flows.replay import build_handlers, missing_start, replay_frames
    from services.runtime.frames import decode_frame
    from services.runtime.kafka import MessageProducer

    request = ReplayJob.model_validate(ctx.request)
    facility = _facility(ctx, [request.flow])
    if facility.flows[request.flow].position_estimator is None:
        raise JobInputError(f"flow {request.flow!r} runs no position estimator: nothing to replay")
    settings = ctx.settings
    refs = read_range(settings.kafka, FrameRef.topic_name(), FrameRef, request.start, request.end)
    ordered = sorted(refs, key=lambda r: (r.captured_at, r.camera_id, r.seq))
    skip = int((ctx.checkpoint or {}).get("frames_done", 0))
    if not ordered:
        note = missing_start(ordered, request.start, settings.infra.broker_max_batches)
        return JobResult(summary={"flow": request.flow, "frame_refs": 0, "frames": 0, "note": note})
    handlers = build_handlers(settings.facility_config, request.flow, settings)
    store = ObjectStore(settings.s3)
    producer = MessageProducer(settings.kafka, client_id=f"depotwatch-job-{ctx.job.id[:8]}")

    def send(message: Any) -> None:
        if request.publish:
            producer.publish(message, request.flow)
            producer.poll(0)

    def progress(done: int, total: int) -> None:
        producer.flush(30)  # what the checkpoint says is done is delivered
        ctx.progress(
            100.0 * (skip + done) / max(1, skip + total),
            f"{skip + done}/{skip + total} frames",
            checkpoint={"frames_done": skip + done},
        )

    try:
        report = replay_frames(
            ordered[skip:],
            lambda ref: store.get(ref.key, bucket=ref.bucket),
            decode_frame,
            handlers,
            send,
            progress=progress,
        )
    finally:
        undelivered = producer.flush(60)
        producer.close(5)
    summary = {
        "flow": request.flow,
        "frame_refs": len(ordered),
        "frames": report.frames + skip,
        "resumed_at_frame": skip,
        "estimates": len(report.estimates),
        "rejected": len(report.rejected),
        "published": request.publish,
        "undelivered": undelivered,
    }
    return JobResult(summary=summary)


def run_score(ctx: JobContext) -> JobResult:
    """A flow's published states against ground truth or another flow over a time range."""
    from schemas.facility_state import FacilityState
    from schemas.ground_truth import GroundTruth
    from services.evaluation.compare import read_range, summarise, topic_for

    request = ScoreJob.model_validate(ctx.request)
    others = [] if request.against == "ground-truth" else [request.against]
    facility = _facility(ctx, [request.flow, *others])
    kafka = ctx.settings.kafka
    ctx.progress(10, "reading states")
    model: Any = GroundTruth if request.against == "ground-truth" else FacilityState
    reference = read_range(kafka, topic_for(request.against), model, request.start, request.end)
    states = read_range(kafka, topic_for(request.flow), FacilityState, request.start, request.end)
    ctx.progress(60, f"scoring {len(states)} states against {len(reference)}")
    lengths = {t.id: t.length_m for t in facility.tracks} if not others else None
    summary = summarise(reference, states, track_lengths=lengths)
    figures = {
        "flow": request.flow,
        "against": request.against,
        "reference_messages": len(reference),
        "states": len(states),
        **summary.figures(),
    }
    url = ctx.put("score.json", json.dumps(figures, indent=2).encode(), "application/json")
    return JobResult(summary=figures, artifacts={"score": url})


def run_train(ctx: JobContext) -> JobResult:
    """``depotwatch train`` as a job: weights and model card to S3."""
    from services.simulator.training import train_detector

    request = TrainJob.model_validate(ctx.request)
    device = "0" if request.device == "gpu" else "cpu"
    checkpoint = ctx.checkpoint or {}
    with tempfile.TemporaryDirectory(prefix="depotwatch-train-") as scratch:
        data = _dataset(ctx, request.data, Path(scratch))
        out = Path(scratch) / "weights" / "depot-yolo.pt"
        resume_from = None
        weights_dir = Path(scratch) / "runs" / "depot-yolo" / "weights"
        if "last" in checkpoint:
            # A previous attempt saved last.pt after an epoch: continue from there, with its
            # best.pt (Ultralytics writes best.pt only when an epoch beats the best so far).
            resume_from = Path(scratch) / "resume" / "last.pt"
            resume_from.parent.mkdir(parents=True)
            ctx.results.get_file(checkpoint["last"], resume_from)
            if "best" in checkpoint:
                weights_dir.mkdir(parents=True)
                ctx.results.get_file(checkpoint["best"], weights_dir / "best.pt")

        epochs_run: list[int] = []

        def on_epoch(epoch: int, epochs: int) -> None:
            epochs_run.append(epoch)
            ctx.progress(100.0 * epoch / epochs, f"epoch {epoch}/{epochs}")

        def on_checkpoint(epoch: int, last: Path) -> None:
            saved = {"epoch": epoch, "last": ctx.key("train/last.pt")}
            ctx.put_file("train/last.pt", last)
            if (last.parent / "best.pt").is_file():
                ctx.put_file("train/best.pt", last.parent / "best.pt")
                saved["best"] = ctx.key("train/best.pt")
            ctx.progress(
                100.0 * epoch / request.epochs, f"epoch {epoch}/{request.epochs} saved", saved
            )

        report = train_detector(
            data=data,
            epochs=request.epochs,
            imgsz=request.imgsz,
            batch=request.batch,
            device=device,
            out=out,
            runs_dir=Path(scratch) / "runs",
            # Jobs run on a worker's thread: no data-loader processes forked from it.
            workers=0,
            on_epoch=on_epoch,
            on_checkpoint=on_checkpoint,
            resume_from=resume_from,
        )
        artifacts = {
            "weights": ctx.put_file("depot-yolo.pt", out),
            "model_card": ctx.put("MODEL_CARD.md", report.card.encode(), "text/markdown"),
        }
    summary = {
        "device": device,
        "train_s": round(report.seconds, 1),
        "resumed_at_epoch": int(checkpoint.get("epoch", 0)),
        "epochs_run": epochs_run,
        "test": report.test,
    }
    return JobResult(summary=summary, artifacts=artifacts)


def _dataset(ctx: JobContext, source: str, scratch: Path) -> Path:
    """A local data.yaml for ``source`` (an S3 dataset is downloaded under ``scratch``)."""
    if source.startswith("file://"):
        path = Path(source.removeprefix("file://"))
        if not path.is_file():
            raise JobInputError(f"data: {path} does not exist on this worker")
        return path
    bucket, _, key = source.removeprefix("s3://").partition("/")
    if "/" not in key:
        raise JobInputError(
            f"data: {source} names no dataset folder; write s3://bucket/<folder>/data.yaml"
        )
    prefix = key.rsplit("/", 1)[0] + "/"
    store = ObjectStore(ctx.settings.s3.model_copy(update={"bucket": bucket}), timeout_s=120.0)
    root = (scratch / "dataset").resolve()
    try:
        names = store.keys(prefix)
        for name in names:
            target = (root / name.removeprefix(prefix).lstrip("/")).resolve()
            if not target.is_relative_to(root):
                raise JobInputError(f"data: object {name!r} lies outside its dataset folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            store.get_file(name, target)
    except ObjectMissingError as exc:
        raise JobInputError(f"data: {exc}") from None
    data = scratch / "dataset" / key.removeprefix(prefix)
    if not data.is_file():
        raise JobInputError(f"data: {source} does not exist")
    # data.yaml names its dataset folder (`path:`) where it was written; here it is beside it.
    spec = yaml.safe_load(data.read_text())
    if not isinstance(spec, dict):
        raise JobInputError(f"data: {source} is not a dataset YAML (`depotwatch sim dataset`)")
    spec["path"] = str(data.parent)
    data.write_text(yaml.safe_dump(spec, sort_keys=False))
    return data


def kind_runners(kinds: Sequence[JobKind]) -> dict[str, KindRunner]:
    """The runner of each kind in ``kinds``."""
    from services.jobs.video import run_video

    every: dict[str, KindRunner] = {
        "video": run_video,
        "replay": run_replay,
        "score": run_score,
        "train": run_train,
    }
    return {k: every[k] for k in kinds}
