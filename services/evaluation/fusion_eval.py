"""Accuracy of the fusion core alone, on simulator scenarios, with a modelled detector.

The simulator's ground truth is turned into what the position estimator and plate reader would
publish: every camera (unless the scenario takes it down) sees the locomotive ends inside its
view of each track (not at the edge of the view, not behind another locomotive's body: see
``observability``), placed ``end_offset_m`` inside the true end (the detector's label
convention) with Gaussian noise, misses some, reads some plates (a few wrongly), and the
estimates arrive late and out of order. The fusion core then runs over them in arrival order
and every snapshot is scored against the truth of its event time, as ``eval pipeline`` does for
the real pipeline. This isolates the state estimator: the figures say what fusion makes of
detector-quality input, independent of the detector's own accuracy.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import click
import cv2
import numpy as np

from schemas.estimates import IdentityEstimate, PositionEstimate, TrackObservation
from schemas.facility import Camera, FacilityConfig
from schemas.facility_state import FacilityState
from schemas.frames import FrameRef
from schemas.geometry import FloatArray, point_at_position
from schemas.ground_truth import GroundTruth
from services.evaluation.compare import AgreementSummary, summarise
from services.evaluation.observability import (
    BODY_HEIGHT_M,
    BODY_WIDTH_M,
    locomotive_box,
    sightlines_blocked,
)
from services.plate_ocr.identity import TextRecogniser
from services.runtime.ports import BatchDetector
from services.state_estimator.coverage import in_view
from services.state_estimator.fusion import FusionConfig, FusionCore, FusionState

if TYPE_CHECKING:
    from services.simulator.world import Scenario, WorldState


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
    plate_height_m: float = 2.5
    edge_margin_m: float = 0.3
    """An end this close to the edge of a view is cut off: not seen."""
    body_width_m: float = BODY_WIDTH_M
    body_height_m: float = BODY_HEIGHT_M


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


@dataclass(frozen=True)
class ModelledRun:
    """What the modelled detector made of a scenario, and what could be known when."""

    arrivals: list[Arrival]
    truths: list[GroundTruth]
    observable: list[frozenset[str]]
    """Per tick: locomotives some camera has seen an end or the plate of, so far."""
    legible: list[frozenset[str]]
    """Per tick: locomotives some camera has read the plate of correctly, so far."""


@dataclass(frozen=True)
class _Sight:
    """One thing a camera might see this tick: an end or a plate of a locomotive."""

    placement: int
    kind: str  # head, tail or plate
    track: str
    position_m: float
    point: tuple[float, float, float]


def _sights(
    world: WorldState, facility: FacilityConfig, detector: DetectorModel
) -> tuple[list[_Sight], FloatArray]:
    """Ends and plates inside the depot this tick, and every locomotive's body box."""
    sights: list[_Sight] = []
    boxes = []
    for i, p in enumerate(world.placements):
        track = facility.track(p.identity.track_id)
        head_xy = point_at_position(track.polyline, p.head_m)[0]
        tail_xy = point_at_position(track.polyline, p.tail_m)[0]
        boxes.append(
            locomotive_box(head_xy, tail_xy, detector.body_width_m, detector.body_height_m)
        )
        inward = 1.0 if p.tail_m >= p.head_m else -1.0
        plate_at = p.head_m + inward * detector.plate_inset_m
        for kind, at, z in (
            ("head", p.head_m, 0.0),
            ("tail", p.tail_m, 0.0),
            ("plate", plate_at, detector.plate_height_m),
        ):
            if 0.0 <= at <= track.length_m:
                xy = point_at_position(track.polyline, at)[0]
                sights.append(_Sight(i, kind, track.id, at, (xy[0], xy[1], z)))
    return sights, np.asarray(boxes, dtype=np.float64).reshape(-1, 7)


def visible_sights(
    camera: Camera,
    view: dict[str, list[tuple[float, float]]],
    sights: list[_Sight],
    boxes: FloatArray,
    track_of_box: list[str],
    edge_margin_m: float,
    lengths: dict[str, float],
) -> list[_Sight]:
    """The sights inside this camera's view (not at its edge) and not behind another body.

    Locomotives on the sight's own track do not hide it (their ends touch at most); without
    a pose there is nothing to occlude with.
    """
    inside = [
        s
        for s in sights
        if in_view(view.get(s.track, []), s.position_m, edge_margin_m, lengths[s.track])
    ]
    if camera.pose is None or not inside:
        return inside
    same_track = np.array([[t == s.track for t in track_of_box] for s in inside])
    hidden = sightlines_blocked(
        camera.pose.position, [s.point for s in inside], boxes, ignore=same_track
    )
    return [s for s, h in zip(inside, hidden, strict=True) if not h]


def modelled_run(
    facility: FacilityConfig,
    scenario: str | Scenario,
    seed: int,
    detector: DetectorModel,
    flow: str = "prod",
    fps: float = 2.0,
) -> ModelledRun:
    """Modelled estimates of a scenario (built-in name or a Scenario), with observability.

    A camera sees an end or a plate when it lies in the camera's coverage at least
    ``edge_margin_m`` from the edge of the view and no other locomotive's body is in the way.
    """
    from services.simulator.world import Simulation, load_scenario

    loaded = load_scenario(scenario) if isinstance(scenario, str) else scenario
    sim = Simulation(facility, loaded, seed, tick_s=1.0 / fps)
    coverage = FusionConfig.from_facility(facility, flow).coverage
    rng = np.random.default_rng(seed)
    arrivals: list[Arrival] = []
    truths: list[GroundTruth] = []
    observable_per_tick: list[frozenset[str]] = []
    legible_per_tick: list[frozenset[str]] = []
    observable: set[str] = set()
    legible: set[str] = set()
    lengths = {t.id: t.length_m for t in facility.tracks}
    for tick in range(sim.ticks):
        world = sim.state(tick)
        truths.append(sim.ground_truth(world))
        sights, boxes = _sights(world, facility, detector)
        track_of_box = [p.identity.track_id for p in world.placements]
        for cam in facility.enabled_cameras:
            if cam.id in world.cameras_down:
                continue
            at = world.at + timedelta(seconds=float(rng.uniform(0, 0.05)))
            frame = _frame(cam.id, tick, at)
            observations = []
            plates = []
            seen = visible_sights(
                cam,
                coverage.get(cam.id, {}),
                sights,
                boxes,
                track_of_box,
                detector.edge_margin_m,
                lengths,
            )
            for sight in seen:
                p = world.placements[sight.placement]
                observable.add(p.locomotive_id)
                if sight.kind == "plate":
                    if rng.random() < detector.plate_read_rate:
                        text = p.identity.plate
                        if rng.random() < detector.plate_error_rate:
                            text = text[:-1] + str((int(text[-1]) + 1) % 10)
                        else:
                            legible.add(p.locomotive_id)
                        plates.append((text, p.identity.model.name, sight.track, sight.position_m))
                    continue
                if rng.random() < detector.miss_rate:
                    continue
                inward = 1.0 if p.tail_m >= p.head_m else -1.0
                sign = 1.0 if sight.kind == "head" else -1.0
                raw = sight.position_m + sign * inward * detector.end_offset_m
                raw += float(rng.normal(0.0, detector.sigma_m))
                observations.append(_observation(sight.kind, sight.track, raw, 0.85))
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
        observable_per_tick.append(frozenset(observable))
        legible_per_tick.append(frozenset(legible))
    arrivals.sort(key=lambda a: a[0])
    return ModelledRun(arrivals, truths, observable_per_tick, legible_per_tick)


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
    from services.evaluation.estimation_chain import EstimationChain
    from services.simulator.render import Renderer
    from services.simulator.world import Simulation, load_scenario

    chain = EstimationChain(facility, flow, detector, recogniser)
    sim = Simulation(facility, load_scenario(scenario), seed, tick_s=1.0 / fps)
    renderer = Renderer(facility)
    arrivals: list[Arrival] = []
    truths: list[GroundTruth] = []
    ticks = sim.ticks if max_ticks is None else min(max_ticks, sim.ticks)
    for tick in range(ticks):
        world = sim.state(tick)
        truths.append(sim.ground_truth(world))
        frames: list[tuple[FrameRef, bytes]] = []
        for cam in facility.enabled_cameras:
            if cam.id in world.cameras_down:
                continue
            image = renderer.render(world, cam.id).image
            ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, cam.jpeg_quality])
            assert ok
            ref = _frame(cam.id, tick, world.at).model_copy(
                update={"width": image.shape[1], "height": image.shape[0]}
            )
            frames.append((ref, jpeg.tobytes()))
        arrive = world.at + timedelta(seconds=latency_s)
        arrivals += [(arrive, est) for est in chain(frames)]
        if progress:
            progress(tick + 1, ticks)
    arrivals.sort(key=lambda a: a[0])
    return arrivals, truths


@dataclass(frozen=True)
class Fused:
    """The fusion core's output over a run: one state per accepted update, and its cost."""

    snapshots: list[FacilityState]
    estimates: int
    cpu_s: float
    """Process CPU time spent in the fusion core (apply and render)."""


def fuse(facility: FacilityConfig, arrivals: list[Arrival], flow: str = "prod") -> Fused:
    """Run the fusion core over estimates in arrival order; a state after every accepted one."""
    settings = facility.flows[flow].state_estimator if flow in facility.flows else None
    core = FusionCore(FusionConfig.from_facility(facility, flow, settings))
    state = FusionState()
    snapshots = []
    started = time.process_time()
    for _, est in arrivals:
        state, accepted = core.apply(state, est)
        if accepted:
            snapshots.append(core.render(state))
    return Fused(snapshots, len(arrivals), time.process_time() - started)


def fuse_and_score(
    facility: FacilityConfig,
    arrivals: list[Arrival],
    truths: list[GroundTruth],
    flow: str = "prod",
    warmup_s: float = 10.0,
    run: ModelledRun | None = None,
    snapshots: list[FacilityState] | None = None,
) -> AgreementSummary:
    """Run the fusion core over estimates in arrival order and score every accepted update.

    With a modelled ``run``, only locomotives observable so far are counted and identity is
    also scored among plates legible so far. ``snapshots`` skips the fusion (already run).
    """
    if snapshots is None:
        snapshots = fuse(facility, arrivals, flow).snapshots
    lengths = {t.id: t.length_m for t in facility.tracks}
    observability = (
        {
            t.tick: (seen, legible)
            for t, seen, legible in zip(run.truths, run.observable, run.legible, strict=True)
        }
        if run is not None
        else None
    )
    return summarise(
        truths,
        snapshots,
        max_skew_s=0.5,
        warmup_s=warmup_s,
        track_lengths=lengths,
        observability=observability,
    )


def evaluate_fusion(
    facility: FacilityConfig,
    scenario: str,
    seed: int = 1,
    detector: DetectorModel | None = None,
    flow: str = "prod",
    warmup_s: float = 10.0,
) -> AgreementSummary:
    """Run the fusion core over a scenario's modelled estimates and score every update
    against the locomotives observable so far."""
    run = modelled_run(facility, scenario, seed, detector or DetectorModel(), flow)
    return fuse_and_score(facility, run.arrivals, run.truths, flow, warmup_s, run=run)


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
        run: ModelledRun | None = None
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
            run = modelled_run(facility, name, seed, model, flow, fps)
            arrivals, truths = run.arrivals, run.truths
            if max_ticks is not None:
                truths = truths[:max_ticks]
            what = f"modelled detector: sigma {sigma} m, miss {miss_rate}, lag {lag} s"
        summary = fuse_and_score(facility, arrivals, truths, flow, warmup, run=run)
        click.echo(f"scenario {name} (seed {seed}, {fps:g} fps, {what})")
        for line in summary.lines():
            click.echo(f"  {line}")


def _real_estimators(
    facility: FacilityConfig, config_path: Path, flow: str
) -> tuple[BatchDetector, TextRecogniser]:
    """The flow's YOLO detector and the offline OCR engine, or one clear error."""
    from services.evaluation.estimation_chain import real_estimators
    from services.position_estimator.detector import WeightsError
    from services.runtime.estimator_service import EstimatorConfigError
    from services.runtime.settings import load_settings

    try:
        return real_estimators(facility, config_path, flow, load_settings())
    except (EstimatorConfigError, WeightsError) as exc:
        raise click.ClickException(str(exc)) from None
