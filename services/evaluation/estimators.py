"""``depotwatch eval estimators``: position estimator and plate reader accuracy on held-out
simulator scenarios (issue 5, item 4).

Frames of the test-split scenarios (never used for training) are rendered for every camera,
stored and decoded as JPEG like the pipeline does, run through the flow's detector and the two
estimator cores, and scored against the renderer's labels (see ``estimator_accuracy``). With
``--oracle`` the true boxes replace the detector, which separates detector errors from the
geometry and OCR behind it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import click
import cv2
import numpy as np

from schemas.estimates import BoundingBox, Detection
from schemas.facility import FacilityConfig
from schemas.frames import FrameRef
from services.evaluation.estimator_accuracy import EstimatorScore, TrueObject, report_lines
from services.plate_ocr.identity import IdentityEstimator, TextRecogniser, plate_work
from services.position_estimator.estimator import PositionEstimator
from services.position_estimator.track_position import observe
from services.runtime.frames import DecodedFrame, Image, Rejected
from services.runtime.ports import BatchDetector

SEED_BASE = 9500
"""Seeds of the evaluation (the detector's own test split uses 9000-9499)."""


@dataclass(frozen=True)
class EvalFrame:
    """A rendered, JPEG round-tripped camera frame and its true objects."""

    camera_id: str
    image: Image
    truth: tuple[TrueObject, ...]


def held_out_scenarios() -> list[str]:
    """Built-in scenarios of the test split."""
    from services.simulator.world import builtin_scenarios, load_scenario

    return [n for n in builtin_scenarios() if load_scenario(n).split == "test"]


def render_frames(
    facility: FacilityConfig, scenarios: Sequence[str], seeds: int, ticks: int, seed_base: int
) -> Iterator[EvalFrame]:
    """Every camera's frame at ``ticks`` evenly spaced times of each scenario and seed."""
    from services.simulator.render import Renderer
    from services.simulator.world import Simulation, load_scenario

    renderer = Renderer(facility)
    for s_index, name in enumerate(scenarios):
        scenario = load_scenario(name)
        for k in range(seeds):
            sim = Simulation(facility, scenario, seed_base + s_index * 100 + k)
            for tick in np.linspace(0, sim.ticks - 1, ticks).astype(int):
                state = sim.state(int(tick))
                for cam_id in renderer.views:
                    if cam_id in state.cameras_down:
                        continue
                    frame = renderer.render(state, cam_id)
                    quality = facility.camera(cam_id).jpeg_quality
                    ok, jpeg = cv2.imencode(
                        ".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, quality]
                    )
                    assert ok
                    image = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
                    truth = tuple(
                        TrueObject(
                            cls=lb.cls,
                            box=lb.box,
                            track_id=lb.track_id,
                            plate=lb.plate,
                            model=lb.model,
                            visible_fraction=lb.visible_fraction,
                            end_position_m=lb.end_position_m,
                        )
                        for lb in frame.labels
                    )
                    yield EvalFrame(cam_id, np.asarray(image, np.uint8), truth)


class OracleDetector:
    """The true boxes of the frames being scored, as detections with confidence 1."""

    def __init__(self) -> None:
        self.truth: dict[str, tuple[TrueObject, ...]] = {}

    @staticmethod
    def key(image: Image) -> str:
        return hashlib.sha1(image.tobytes()).hexdigest()

    def detect(self, images: Sequence[Image]) -> list[list[Detection]]:
        return [
            [
                Detection(
                    cls=t.cls,
                    bbox=BoundingBox(x1=t.box[0], y1=t.box[1], x2=t.box[2], y2=t.box[3]),
                    confidence=1.0,
                )
                for t in self.truth.get(self.key(img), ())
            ]
            for img in images
        ]


class FixedDetections:
    """Hands already computed detections of a batch to an estimator core (detect once)."""

    def __init__(self, detections: list[list[Detection]]) -> None:
        self.detections = detections

    def detect(self, images: Sequence[Image]) -> list[list[Detection]]:
        assert len(images) == len(self.detections)
        return self.detections


def _ref(camera_id: str, seq: int, image: Image) -> FrameRef:
    return FrameRef(
        camera_id=camera_id,
        seq=seq,
        captured_at=datetime.now(UTC),
        bucket="evaluation",
        key=f"eval/{camera_id}/{seq}.jpg",
        width=image.shape[1],
        height=image.shape[0],
        size=1,
        sha256="0" * 64,
    )


def score_estimators(
    facility: FacilityConfig,
    frames: Iterator[EvalFrame],
    detector: BatchDetector,
    recogniser: TextRecogniser,
    min_plate_confidence: float,
    batch: int = 8,
    progress: Callable[[EstimatorScore], None] | None = None,
) -> EstimatorScore:
    """Run detector + cores over the frames and score them."""
    score = EstimatorScore()
    pending: list[EvalFrame] = []
    seq = 0

    def flush() -> None:
        nonlocal seq
        if isinstance(detector, OracleDetector):
            detector.truth = {OracleDetector.key(f.image): f.truth for f in pending}
        dets = detector.detect([f.image for f in pending])
        decoded = []
        for frame in pending:
            decoded.append(DecodedFrame(_ref(frame.camera_id, seq, frame.image), frame.image))
            seq += 1
        positions = PositionEstimator(
            lambda: facility, FixedDetections(dets), "eval", "evaluation", "evaluation"
        )(decoded)
        identities = IdentityEstimator(
            facility=lambda: facility,
            recogniser=recogniser,
            flow="eval",
            estimator="evaluation",
            min_plate_confidence=min_plate_confidence,
        )(plate_work(positions, decoded))
        for frame, frame_dets, outcome in zip(pending, dets, identities, strict=True):
            camera = facility.camera(frame.camera_id)
            ends = [
                (d, observe(d, camera, facility.tracks))
                for d in frame_dets
                if d.cls in ("head", "tail")
            ]
            score.add_positions(frame.truth, ends)
            assert not isinstance(outcome, Rejected)
            score.add_identities(frame.truth, outcome)  # type: ignore[arg-type]
        pending.clear()
        if progress:
            progress(score)

    for frame in frames:
        pending.append(frame)
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return score


@click.command("estimators")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=Path("facility.yaml"),
    show_default=True,
)
@click.option("--flow", default="prod", show_default=True, help="Flow whose detector to score.")
@click.option("--weights", type=click.Path(path_type=Path), default=None, help="Override weights.")
@click.option("--imgsz", type=click.IntRange(64, 2048), default=None, help="Override imgsz.")
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    help="Scenario name or file (repeatable); default: every built-in test-split scenario.",
)
@click.option("--seeds", default=2, show_default=True, type=click.IntRange(1, 100))
@click.option(
    "--ticks", default=6, show_default=True, type=click.IntRange(1, 1000), help="Times per seed."
)
@click.option("--seed-base", default=SEED_BASE, show_default=True, type=int)
@click.option("--oracle", is_flag=True, help="True boxes instead of the detector.")
@click.option("--json-out", type=click.Path(path_type=Path), default=None)
def estimators_command(
    config_path: Path,
    flow: str,
    weights: Path | None,
    imgsz: int | None,
    scenarios: tuple[str, ...],
    seeds: int,
    ticks: int,
    seed_base: int,
    oracle: bool,
    json_out: Path | None,
) -> None:
    """Head/tail position error, track accuracy, plate exact-match and model accuracy.

    Renders held-out simulator scenarios for every camera and scores the flow's detector with
    the position and plate cores against the goals (median <= 0.5 m, p95 <= 2 m, track >= 99%,
    plate >= 95%, model >= 98%). Exits 1 when a goal is missed.
    """
    from schemas.facility import ConfigError, load_facility
    from services.evaluation.estimator_accuracy import verdicts
    from services.plate_ocr.config import plate_ocr_config
    from services.plate_ocr.ocr_engine import RapidTextRecogniser
    from services.position_estimator.config import position_estimator_config
    from services.runtime.estimator_service import EstimatorConfigError
    from services.runtime.settings import load_settings

    settings = load_settings()
    try:
        facility = load_facility(config_path)
        pos = position_estimator_config(facility, config_path, flow, settings, weights=weights)
        plates = plate_ocr_config(facility, config_path, flow)
    except (ConfigError, EstimatorConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    names = list(scenarios) or held_out_scenarios()
    if not names:
        raise click.ClickException(
            "no test-split scenarios found; pass --scenario NAME (see services/simulator/scenarios)"
        )
    detector: BatchDetector
    if oracle:
        detector = OracleDetector()
        what = "true boxes (oracle)"
    else:
        from services.position_estimator.detector import WeightsError, YoloDetector

        try:
            detector = YoloDetector(
                pos.weights, imgsz or pos.imgsz, pos.confidence, pos.device, pos.max_batch
            )
        except WeightsError as exc:
            raise click.ClickException(str(exc)) from None
        what = f"{pos.weights} imgsz {imgsz or pos.imgsz}"
    click.echo(
        f"scoring {what} on {', '.join(names)}: {seeds} seed(s) x {ticks} times x all cameras",
        err=True,
    )
    frames = render_frames(facility, names, seeds, ticks, seed_base)
    score = score_estimators(
        facility,
        frames,
        detector,
        RapidTextRecogniser(),
        plates.min_plate_confidence,
        batch=pos.max_batch,
        progress=lambda s: (
            click.echo(f"  {s.frames} frames scored", err=True)
            if s.frames % 48 < pos.max_batch
            else None
        ),
    )
    figures = score.figures()
    for line in report_lines(figures):
        click.echo(line)
    if json_out is not None:
        doc = {"scenarios": names, "seeds": seeds, "ticks": ticks, "oracle": oracle, **figures}
        json_out.write_text(json.dumps(doc, indent=2) + "\n")
    if any(v is False for v in verdicts(figures).values()):
        raise SystemExit(1)
