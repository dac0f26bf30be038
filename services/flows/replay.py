"""``depotwatch replay --flow NAME --from T --to T``: re-run a flow's estimators on history.

Frame references of the time range are read from ``frames.v1`` (``offsets_for_times``), their
images fetched from the object store, and the flow's estimator cores (the same
``PositionEstimator`` / ``IdentityEstimator`` the live services run) applied in capture order.
The estimates go to the flow's own topics, so a new model is scored on history without touching
prod. ``--score`` also fuses them with the flow's state-estimator core and prints the accuracy
against ``ground-truth.v1`` of the same range.

The plate reader reads the plate boxes of the flow's own position core here (as the live one
reads them from ``positions.<flow>.v1``; a flow whose ``positions_from`` names another flow is
replayed with its own detector, if it has one).

Run replay for a flow whose live estimators are stopped (or a flow made for replays): a live
state estimator would treat replayed, older frames as late and ignore them, and the flow's
plate-ocr, once started, would read the replayed position estimates again and publish their
identities a second time (fusion ignores the repeats, but the work is done twice).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import click

from schemas.base import Message
from schemas.estimates import IdentityEstimate, PositionEstimate
from schemas.facility import ConfigError, load_facility
from schemas.frames import FrameRef
from schemas.ground_truth import GroundTruth
from services.evaluation.compare import parse_time, read_range, summarise
from services.plate_ocr.config import ESTIMATOR_VERSION as OCR_VERSION
from services.plate_ocr.config import plate_ocr_config
from services.plate_ocr.identity import IdentityEstimator, plate_work
from services.plate_ocr.ocr_engine import RapidTextRecogniser
from services.position_estimator.config import ESTIMATOR_VERSION as POS_VERSION
from services.position_estimator.config import position_estimator_config
from services.position_estimator.detector import YoloDetector
from services.position_estimator.estimator import PositionEstimator
from services.runtime.facility_watch import FacilityWatch
from services.runtime.frames import (
    DecodedFrame,
    FrameDecodeError,
    FrameOutcome,
    Rejected,
    decode_frame,
)
from services.runtime.kafka import MessageProducer
from services.runtime.logs import configure_logging
from services.runtime.settings import Settings, load_settings
from services.runtime.storage import ObjectStore
from services.state_estimator.fusion import FusionConfig, FusionCore, published_changes

log = logging.getLogger(__name__)

Handler = Callable[[Sequence[DecodedFrame]], list[FrameOutcome]]
"""An estimator core: a batch of decoded frames in, one outcome per frame out."""


@dataclass
class ReplayReport:
    """What a replay did."""

    frames: int = 0
    estimates: list[Message] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """Human-readable summary."""
        per_frame = self.seconds / self.frames if self.frames else 0.0
        positions = sum(isinstance(m, PositionEstimate) for m in self.estimates)
        identities = sum(isinstance(m, IdentityEstimate) for m in self.estimates)
        return [
            f"frames replayed:   {self.frames} ({per_frame * 1000:.0f} ms/frame)",
            f"estimates:         {positions} positions, {identities} identities",
            f"frames rejected:   {len(self.rejected)}"
            + (f" (first: {self.rejected[0]})" if self.rejected else ""),
        ]


def missing_start(
    refs: Sequence[FrameRef], start: datetime, max_batches: int, slack_s: float = 60.0
) -> str | None:
    """A note when no reference was found, or the ones found begin well after ``start``: older
    ones may have left ``frames.v1`` (its retention; the embedded broker also keeps only
    ``max_batches`` batches a partition), so the replay is shorter than asked. None when they
    begin within ``slack_s`` of it."""
    why = (
        "nothing was captured then, or it is past frames.v1's retention"
        f" (DEPOTWATCH_TOPICS__FRAMES_RETENTION_HOURS; the embedded broker also keeps only"
        f" DEPOTWATCH_INFRA__BROKER_MAX_BATCHES={max_batches} batches a partition)"
    )
    if not refs:
        return f"note: no frame reference in that range: {why}"
    first = min(r.captured_at for r in refs)
    gap = (first - start).total_seconds()
    if gap <= slack_s:
        return None
    return (
        f"note: the first frame reference is from {first.isoformat()}, {gap / 60:.1f} min after"
        f" --from: {why}"
    )


def replay_frames(
    refs: Iterable[FrameRef],
    fetch: Callable[[FrameRef], bytes],
    decode: Callable[[FrameRef, bytes], DecodedFrame],
    handlers: Sequence[Handler],
    publish: Callable[[Message], None],
    batch: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayReport:
    """Run ``handlers`` over the frames in capture order and publish every estimate (pure loop).
    ``progress(done, total)`` is called after every batch (a job stops there when cancelled).

    A frame whose object is missing or corrupt is reported, not fatal: history may have
    expired from the object store before its references left Kafka.
    """
    report = ReplayReport()
    t0 = time.perf_counter()
    ordered = sorted(refs, key=lambda r: (r.captured_at, r.camera_id, r.seq))
    for start in range(0, len(ordered), batch):
        frames: list[DecodedFrame] = []
        for ref in ordered[start : start + batch]:
            try:
                frames.append(decode(ref, fetch(ref)))
            except (FrameDecodeError, OSError, RuntimeError) as exc:
                report.rejected.append(f"{ref.camera_id}#{ref.seq}: {exc}")
        report.frames += len(frames)
        if not frames:
            continue
        for handler in handlers:
            for ref_frame, outcome in zip(frames, handler(frames), strict=True):
                if isinstance(outcome, Rejected):
                    report.rejected.append(
                        f"{ref_frame.ref.camera_id}#{ref_frame.ref.seq}: {outcome.reason}"
                    )
                    continue
                for message in outcome:
                    publish(message)
                    report.estimates.append(message)
        if progress is not None:
            progress(min(start + batch, len(ordered)), len(ordered))
    report.seconds = time.perf_counter() - t0
    return report


def with_plates(positions: Handler, plates: IdentityEstimator) -> Handler:
    """The position core, then the plate reader on the plate boxes it found (as the live plate
    reader reads the position estimates): each frame's outcome holds both its estimates."""

    def handle(frames: Sequence[DecodedFrame]) -> list[FrameOutcome]:
        outcomes = positions(frames)
        read = iter(plates(plate_work(outcomes, frames)))
        merged: list[FrameOutcome] = []
        for outcome in outcomes:
            if isinstance(outcome, Rejected):
                merged.append(outcome)
                continue
            identities = next(read)
            merged.append([*outcome, *([] if isinstance(identities, Rejected) else identities)])
        return merged

    return handle


def build_handlers(config_path: Path, flow: str, settings: object) -> list[Handler]:
    """The flow's estimator cores with their real detector and OCR (imports torch)."""

    assert isinstance(settings, Settings)
    watch = FacilityWatch(config_path)
    facility = watch.config
    stages = facility.flow(flow)
    if stages.position_estimator is None:
        return []
    pc = position_estimator_config(facility, config_path, flow, settings, "replay")
    detector = YoloDetector(pc.weights, pc.imgsz, pc.confidence, pc.device, pc.max_batch)
    positions = PositionEstimator(lambda: facility, detector, flow, POS_VERSION, pc.model_version)
    if stages.plate_ocr is None:
        return [positions]
    oc = plate_ocr_config(facility, config_path, flow, "replay")
    plates = IdentityEstimator(
        lambda: facility,
        RapidTextRecogniser(),
        flow,
        OCR_VERSION,
        oc.min_plate_confidence,
        reread_after_s=oc.reread_after_s,
    )
    return [with_plates(positions, plates)]


@click.command("replay")
@click.option("--flow", required=True, help="Flow whose estimators to re-run.")
@click.option("--from", "start", required=True, help="Start (ISO-8601 with zone, or -15m).")
@click.option("--to", "end", default="now", show_default=True, help="End of the range.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None)
@click.option("--batch", type=click.IntRange(1, 256), default=8, show_default=True)
@click.option(
    "--publish/--no-publish",
    default=True,
    show_default=True,
    help="Write the estimates to the flow's topics.",
)
@click.option(
    "--score/--no-score",
    default=False,
    show_default=True,
    help="Fuse the estimates and print accuracy against ground-truth.v1.",
)
def replay_command(
    flow: str,
    start: str,
    end: str,
    config_path: Path | None,
    batch: int,
    publish: bool,
    score: bool,
) -> None:
    """Re-run FLOW's estimators over stored frames into FLOW's topics."""

    settings = load_settings()
    configure_logging(f"replay.{flow}", settings.log_level, settings.log_format)
    path = config_path or settings.facility_config
    try:
        facility = load_facility(path)
        stages = facility.flow(flow)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyError as exc:
        raise click.ClickException(str(exc).strip("'\"")) from None
    t0, t1 = parse_time(start), parse_time(end)
    if t1 <= t0:
        raise click.BadParameter("--to must be after --from")
    if stages.position_estimator is None:
        raise click.ClickException(
            f"flow {flow!r} runs no position estimator, so there is nothing to replay; set "
            f"flows.{flow}.position_estimator (the plate reader reads its plate boxes)"
        )
    refs = read_range(settings.kafka, FrameRef.topic_name(), FrameRef, t0, t1)
    click.echo(f"{len(refs)} frame references between {t0.isoformat()} and {t1.isoformat()}")
    note = missing_start(refs, t0, settings.infra.broker_max_batches)
    if note:
        click.echo(note, err=True)
    if not refs:
        return
    try:
        handlers = build_handlers(path, flow, settings)
    except Exception as exc:  # weights or OCR missing: one line, not a traceback
        raise click.ClickException(f"cannot build flow {flow!r}'s estimators: {exc}") from None
    store = ObjectStore(settings.s3)
    producer = MessageProducer(settings.kafka, client_id=f"depotwatch-replay-{flow}")

    def send(message: Message) -> None:
        if publish:
            producer.publish(message, flow)
            producer.poll(0)

    try:
        report = replay_frames(
            refs,
            lambda ref: store.get(ref.key, bucket=ref.bucket),
            decode_frame,
            handlers,
            send,
            batch,
        )
    finally:
        left = producer.flush(60)
    for line in report.lines():
        click.echo(line)
    if publish:
        click.echo(f"published to {flow}'s topics ({left} undelivered)")
    if score:
        core = FusionCore(FusionConfig.from_facility(facility, flow, stages.state_estimator))
        estimates = sorted(
            (m for m in report.estimates if isinstance(m, PositionEstimate | IdentityEstimate)),
            key=lambda m: m.frame.captured_at,
        )
        states = list(published_changes(core, estimates))
        truth = read_range(settings.kafka, GroundTruth.topic_name(), GroundTruth, t0, t1)
        click.echo(f"score of {flow} against ground truth ({len(truth)} ticks):")
        for line in summarise(truth, states).lines():
            click.echo(line)
