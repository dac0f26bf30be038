"""Accuracy of the fusion core alone, on simulator scenarios, with a modelled detector.

The simulator's ground truth is turned into what the position estimator and plate reader would
publish: every camera (unless the scenario takes it down) sees the locomotive ends inside its
view of each track, placed ``end_offset_m`` inside the true end (the detector's label
convention) with Gaussian noise, misses some, reads some plates (a few wrongly), and the
estimates arrive late and out of order. The fusion core then runs over them in arrival order
and every snapshot is scored against the truth of its event time, as ``eval pipeline`` does for
the real pipeline. This isolates the state estimator: the figures say what fusion makes of
detector-quality input, independent of the detector's own accuracy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import click
import cv2
import numpy as np

from schemas.estimates import IdentityEstimate, PositionEstimate, TrackObservation
from schemas.facility import FacilityConfig
from schemas.frames import FrameRef
from schemas.ground_truth import GroundTruth
from services.evaluation.compare import AgreementSummary, summarise
from services.evaluation.estimators import FixedDetections
from services.plate_ocr.identity import TextRecogniser
from services.position_estimator.estimator import BatchDetector, to_frame_pixels
from services.runtime.frames import (
    REDUCED_DECODE,
    DecodedFrame,
    FrameOutcome,
    Rejected,
    decode_reduction,
)
from services.state_estimator.coverage import covers
from services.state_estimator.fusion import FusionConfig, FusionCore, FusionState


@dataclass(frozen=True)
class DetectorModel:
    """How the modelled estimators err."""

    end_offset_m: float = 0.3
    sigma_m: float = 0.15
    miss_rate: float = 0.05
    plate_read_rate: float = 0.5
    plate_error_rate: float = 0.02
    max_lag_s: float = 1.0
    plate_inset_m: float = 1.0


def _frame(camera: str, seq: int, at: datetime) -> FrameRef:
    key = f"{camera}/{seq:08d}.jpg"
    return FrameRef(
        camera_id=camera,
        seq=seq,
        captured_at=at,
        bucket="depotwatch-frames",
        key=key,
        width=1280,
        height=720,
        size=1,
        sha256=hashlib.sha256(key.encode()).hexdigest(),
    )


def _observation(kind: str, track: str, position: float, conf: float) -> TrackObservation:
    return TrackObservation(
        kind=kind,
        floor_x_m=position,
        floor_y_m=0.0,
        track_id=track,
        position_m=position,
        distance_to_track_m=0.1,
        confidence=conf,
    )


Arrival = tuple[datetime, PositionEstimate | IdentityEstimate]


def modelled_estimates(
    facility: FacilityConfig,
    scenario: str,
    seed: int,
    detector: DetectorModel,
    flow: str = "prod",
    fps: float = 2.0,
) -> tuple[list[Arrival], list[GroundTruth]]:
    """(estimates with their arrival times, ground truth per tick) of a simulator scenario."""
    from services.simulator.world import Simulation, load_scenario

    sim = Simulation(facility, load_scenario(scenario), seed, tick_s=1.0 / fps)
    coverage = FusionConfig.from_facility(facility, flow).coverage
    rng = np.random.default_rng(seed)
    tracks = {t.id: t.length_m for t in facility.tracks}
    arrivals: list[Arrival] = []
    truths: list[GroundTruth] = []
    for tick in range(sim.ticks):
        world = sim.state(tick)
        truths.append(sim.ground_truth(world))
        for cam in facility.enabled_cameras:
            if cam.id in world.cameras_down:
                continue
            at = world.at + timedelta(seconds=float(rng.uniform(0, 0.05)))
            frame = _frame(cam.id, tick, at)
            observations = []
            plates = []
            for p in world.placements:
                track = p.identity.track_id
                view = coverage.get(cam.id, {}).get(track)
                if not view:
                    continue
                inward = 1.0 if p.tail_m >= p.head_m else -1.0
                for kind, true_end, sign in (("head", p.head_m, 1.0), ("tail", p.tail_m, -1.0)):
                    if not 0.0 <= true_end <= tracks[track] or not covers(view, true_end):
                        continue
                    if rng.random() < detector.miss_rate:
                        continue
                    raw = true_end + sign * inward * detector.end_offset_m
                    raw += float(rng.normal(0.0, detector.sigma_m))
                    observations.append(_observation(kind, track, raw, 0.85))
                plate_at = p.head_m + inward * detector.plate_inset_m
                if covers(view, plate_at) and rng.random() < detector.plate_read_rate:
                    text = p.identity.plate
                    if rng.random() < detector.plate_error_rate:
                        text = text[:-1] + str((int(text[-1]) + 1) % 10)
                    plates.append((text, p.identity.model.name, track, plate_at))
            lag = timedelta(seconds=float(rng.uniform(0.05, detector.max_lag_s)))
            arrivals.append(
                (
                    at + lag,
                    PositionEstimate(
                        flow=flow,
                        camera_id=cam.id,
                        frame=frame,
                        estimator="modelled/1",
                        model_version="modelled",
                        estimated_at=at + lag,
                        observations=observations,
                    ),
                )
            )
            for text, model, track, pos in plates:
                ident_lag = timedelta(seconds=float(rng.uniform(0.05, detector.max_lag_s)))
                arrivals.append(
                    (
                        at + ident_lag,
                        IdentityEstimate(
                            flow=flow,
                            camera_id=cam.id,
                            frame=frame,
                            estimator="modelled/1",
                            estimated_at=at + ident_lag,
                            plate_text=text,
                            plate_confidence=0.9,
                            locomotive_model=model,
                            model_confidence=0.8,
                            observation=_observation("plate", track, pos, 0.9),
                        ),
                    )
                )
    arrivals.sort(key=lambda a: a[0])
    return arrivals, truths


def rendered_estimates(
    facility: FacilityConfig,
    scenario: str,
    seed: int,
    detector: BatchDetector,
    recogniser: TextRecogniser,
    flow: str = "prod",
    fps: float = 2.0,
    latency_s: float = 0.3,
    max_ticks: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[Arrival], list[GroundTruth]]:
    """(estimates with arrival times, ground truth per tick) from the real estimator cores.

    Every enabled camera's view is rendered, JPEG round-tripped at the camera's quality and
    decoded as the position estimator decodes it, then run through the flow's detector, the
    position core and the plate reader core: the pipeline without Kafka, S3 and RTSP. Each
    estimate arrives ``latency_s`` after its capture.
    """
    from services.plate_ocr.identity import IdentityEstimator
    from services.position_estimator.estimator import PositionEstimator
    from services.simulator.render import Renderer
    from services.simulator.world import Simulation, load_scenario

    stages = facility.flows[flow]
    plate_settings = stages.plate_ocr
    imgsz = stages.position_estimator.imgsz if stages.position_estimator else None
    sim = Simulation(facility, load_scenario(scenario), seed, tick_s=1.0 / fps)
    renderer = Renderer(facility)
    arrivals: list[Arrival] = []
    truths: list[GroundTruth] = []
    ticks = sim.ticks if max_ticks is None else min(max_ticks, sim.ticks)
    for tick in range(ticks):
        world = sim.state(tick)
        truths.append(sim.ground_truth(world))
        frames: list[DecodedFrame] = []
        full: list[DecodedFrame] = []
        for cam in facility.enabled_cameras:
            if cam.id in world.cameras_down:
                continue
            image = renderer.render(world, cam.id).image
            ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, cam.jpeg_quality])
            assert ok
            ref = _frame(cam.id, tick, world.at).model_copy(
                update={"width": image.shape[1], "height": image.shape[0]}
            )
            reduction = decode_reduction(ref.width, ref.height, imgsz)
            small = cv2.imdecode(jpeg, REDUCED_DECODE[reduction])
            frames.append(DecodedFrame(ref, np.asarray(small, np.uint8)))
            full.append(DecodedFrame(ref, np.asarray(cv2.imdecode(jpeg, cv2.IMREAD_COLOR))))
        if not frames:
            continue
        detections = [
            to_frame_pixels(d, f.scale)
            for d, f in zip(detector.detect([f.image for f in frames]), frames, strict=True)
        ]
        positions = PositionEstimator(
            lambda: facility, FixedDetections(detections), flow, "evaluation", "evaluation"
        )
        outcomes: list[FrameOutcome] = list(positions(full))
        if plate_settings is not None:
            reader = IdentityEstimator(
                lambda: facility,
                FixedDetections(detections),
                recogniser,
                flow,
                "evaluation",
                plate_settings.min_plate_confidence,
            )
            outcomes += reader(full)
        arrive = world.at + timedelta(seconds=latency_s)
        for outcome in outcomes:
            if isinstance(outcome, Rejected):
                continue
            for est in outcome:
                assert isinstance(est, PositionEstimate | IdentityEstimate)
                arrivals.append((arrive, est))
        if progress:
            progress(tick + 1, ticks)
    arrivals.sort(key=lambda a: a[0])
    return arrivals, truths


def fuse_and_score(
    facility: FacilityConfig,
    arrivals: list[Arrival],
    truths: list[GroundTruth],
    flow: str = "prod",
    warmup_s: float = 10.0,
) -> AgreementSummary:
    """Run the fusion core over estimates in arrival order and score every accepted update."""
    settings = facility.flows[flow].state_estimator if flow in facility.flows else None
    core = FusionCore(FusionConfig.from_facility(facility, flow, settings))
    state = FusionState()
    snapshots = []
    for _, est in arrivals:
        if isinstance(est, PositionEstimate):
            state, accepted = core.apply_position(state, est)
        else:
            state, accepted = core.apply_identity(state, est)
        if accepted:
            snapshots.append(core.render(state))
    lengths = {t.id: t.length_m for t in facility.tracks}
    return summarise(truths, snapshots, max_skew_s=0.5, warmup_s=warmup_s, track_lengths=lengths)


def evaluate_fusion(
    facility: FacilityConfig,
    scenario: str,
    seed: int = 1,
    detector: DetectorModel | None = None,
    flow: str = "prod",
    warmup_s: float = 10.0,
) -> AgreementSummary:
    """Run the fusion core over a scenario's modelled estimates and score every update."""
    arrivals, truths = modelled_estimates(facility, scenario, seed, detector or DetectorModel())
    return fuse_and_score(facility, arrivals, truths, flow, warmup_s)


@click.command("fusion")
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    default=("test-busy", "test-dim"),
    show_default=True,
    help="Simulator scenarios (held-out: the test split).",
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--config", "config_path", default="facility.yaml", show_default=True)
@click.option("--flow", default="prod", show_default=True, help="Flow whose settings to use.")
@click.option(
    "--detector",
    "detector_kind",
    type=click.Choice(["modelled", "yolo"]),
    default="modelled",
    show_default=True,
    help="modelled: estimates made from ground truth with the noise below; yolo: frames "
    "rendered per camera and run through the flow's detector, position core and plate reader.",
)
@click.option(
    "--sigma", type=float, default=0.15, show_default=True, help="Detector position noise, metres."
)
@click.option("--miss-rate", type=float, default=0.05, show_default=True)
@click.option(
    "--lag",
    type=float,
    default=1.0,
    show_default=True,
    help="Estimates arrive up to this many seconds late, out of order (modelled).",
)
@click.option(
    "--fps", type=click.FloatRange(0.1, 10), default=2.0, show_default=True, help="Frames/s."
)
@click.option(
    "--max-ticks",
    type=click.IntRange(1),
    default=None,
    help="Score only the first ticks of each scenario (yolo runs are slow on a CPU).",
)
@click.option("--warmup", type=float, default=10.0, show_default=True, help="Seconds not scored.")
def fusion_command(
    scenarios: tuple[str, ...],
    seed: int,
    config_path: str,
    flow: str,
    detector_kind: str,
    sigma: float,
    miss_rate: float,
    lag: float,
    fps: float,
    max_ticks: int | None,
    warmup: float,
) -> None:
    """Accuracy of the state estimator's fusion on simulator scenarios.

    With --detector yolo this is the whole estimation chain (detector, track positions, plate
    reading, fusion) without Kafka/S3/RTSP: fast, deterministic, and what `eval pipeline`
    measures live. Every fused update is scored against the truth of its event time.
    """
    from schemas.facility import ConfigError, load_facility

    try:
        facility = load_facility(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if flow not in facility.flows:
        raise click.ClickException(
            f"{config_path}: no flow {flow!r}; use one of {', '.join(facility.flows)}"
        )
    for name in scenarios:
        if detector_kind == "yolo":
            detector, recogniser = _real_estimators(facility, Path(config_path), flow)
            arrivals, truths = rendered_estimates(
                facility,
                name,
                seed,
                detector,
                recogniser,
                flow,
                fps,
                max_ticks=max_ticks,
                progress=lambda done, total: (
                    click.echo(f"  {done}/{total} ticks", err=True) if done % 50 == 0 else None
                ),
            )
            what = f"detector {facility.flows[flow].position_estimator.weights}"  # type: ignore[union-attr]
        else:
            model = DetectorModel(sigma_m=sigma, miss_rate=miss_rate, max_lag_s=lag)
            arrivals, truths = modelled_estimates(facility, name, seed, model, flow, fps)
            if max_ticks is not None:
                truths = truths[:max_ticks]
            what = f"modelled detector: sigma {sigma} m, miss {miss_rate}, lag {lag} s"
        summary = fuse_and_score(facility, arrivals, truths, flow, warmup)
        click.echo(f"scenario {name} (seed {seed}, {fps:g} fps, {what})")
        for line in summary.lines():
            click.echo(f"  {line}")


def _real_estimators(
    facility: FacilityConfig, config_path: Path, flow: str
) -> tuple[BatchDetector, TextRecogniser]:
    """The flow's YOLO detector and the offline OCR engine, or one clear error."""
    from services.plate_ocr.ocr_engine import RapidTextRecogniser
    from services.position_estimator.config import (
        EstimatorConfigError,
        position_estimator_config,
    )
    from services.position_estimator.detector import WeightsError, YoloDetector
    from services.runtime.settings import load_settings

    try:
        pos = position_estimator_config(facility, config_path, flow, load_settings())
        detector = YoloDetector(pos.weights, pos.imgsz, pos.confidence, pos.device, pos.max_batch)
    except (EstimatorConfigError, WeightsError) as exc:
        raise click.ClickException(str(exc)) from None
    return detector, RapidTextRecogniser()
