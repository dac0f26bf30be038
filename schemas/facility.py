"""The facility config (``facility.yaml``): tracks, cameras, flows, locomotive models.

Operators edit this file; every service reads it. Validation reports every problem it can
find, each as one line naming the field and the fix (see :func:`load_facility`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import cached_property
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlparse

import numpy as np
import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from schemas.base import FLOW_NAME_PATTERN, IDENTIFIER_PATTERN, Identifier, StrictModel
from schemas.geometry import (
    DegenerateHomographyError,
    FloatArray,
    Point,
    apply_homography,
    fit_homography,
    least_consistent_point,
    locate_on_polyline,
    pinhole_floor_homography,
    polyline_length,
)

SOURCE_SCHEMES = ("rtsp", "rtsps", "http", "https", "file", "webrtc")
Point2 = tuple[float, float]
Point3 = tuple[float, float, float]


TrackEnd = Literal["start", "end"]
TRACK_ENDS: tuple[TrackEnd, ...] = ("start", "end")


class Track(StrictModel):
    """A track as a polyline on the facility floor, in metres."""

    id: Identifier = Field(description="Track id, e.g. T1.")
    name: str = Field(default="", description="Display name.")
    polyline: list[Point2] = Field(
        min_length=2, description="Centre line as [x, y] metres; position_m runs from the first."
    )
    tolerance_m: float = Field(
        default=2.0, gt=0, le=10, description="Max distance from the centre line to count as on it."
    )
    gates: list[TrackEnd] = Field(
        default_factory=lambda: list(TRACK_ENDS),
        max_length=2,
        description="Track ends locomotives can pass (doors, a line out of the depot); any "
        "other end is a buffer stop: no locomotive stands beyond it.",
    )

    @field_validator("gates")
    @classmethod
    def _distinct_gates(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("lists an end twice; write [start], [end] or [start, end]")
        return v

    @field_validator("polyline")
    @classmethod
    def _no_zero_segments(cls, v: list[Point2]) -> list[Point2]:
        for i, (a, b) in enumerate(pairwise(v)):
            if np.hypot(b[0] - a[0], b[1] - a[1]) < 1e-6:
                raise ValueError(f"points {i} and {i + 1} coincide; remove the duplicate point")
        return v

    @property
    def length_m(self) -> float:
        """Length of the track, metres."""
        return polyline_length(self.polyline)


def place_on_tracks(
    floor_point: Point, tracks: Sequence[Track]
) -> tuple[Track | None, float | None, float | None]:
    """Nearest track within its tolerance: (track, position_m, distance_m), or Nones off track.

    The distance to the nearest track is reported even when it is beyond tolerance, so an
    operator can see how far off a detection was.
    """
    best: tuple[Track, float, float] | None = None
    for track in tracks:
        where = locate_on_polyline(track.polyline, floor_point)
        if best is None or where.distance_m < best[2]:
            best = (track, where.position_m, where.distance_m)
    if best is None:
        return None, None, None
    track, position, distance = best
    if distance > track.tolerance_m:
        return None, None, distance
    return track, position, distance


class CalibrationPoint(StrictModel):
    """A pixel in the camera image and the floor point (metres) it shows."""

    pixel: Point2 = Field(description="[u, v] pixel, origin top-left.")
    floor: Point2 = Field(description="[x, y] facility floor metres.")


class CameraPose(StrictModel):
    """Where a camera hangs (simulator rendering; real cameras need only calibration)."""

    position: Point3 = Field(description="[x, y, z] metres; z is height above the floor.")
    look_at: Point3 = Field(description="[x, y, z] metres of the point the camera centres on.")
    hfov_deg: float = Field(gt=5, lt=170, description="Horizontal field of view, degrees.")


class Camera(StrictModel):
    """One camera: where its stream comes from and how its pixels map to the floor."""

    id: Identifier = Field(description="Camera id; Kafka key, S3 key prefix and metrics label.")
    source: str = Field(
        description="Stream URL: rtsp://, rtsps://, http(s):// or file://; webrtc://<camera id> "
        "for a browser or phone that streams to the web app's /webrtc page.",
        # For the API's JSON Schema; the validator below words the errors.
        json_schema_extra={"pattern": "^(" + "|".join(SOURCE_SCHEMES) + ")://."},
    )
    enabled: bool = Field(default=True, description="Disabled cameras are not captured.")
    fps: float = Field(default=2.0, gt=0, le=60, description="Target frames per second to keep.")
    width: int = Field(default=1280, gt=0, le=8192, description="Frame width, pixels.")
    height: int = Field(default=720, gt=0, le=8192, description="Frame height, pixels.")
    jpeg_quality: int = Field(default=85, ge=30, le=100, description="JPEG quality for storage.")
    tracks: list[Identifier] = Field(
        default_factory=list, description="Tracks this camera looks at (for health and docs)."
    )
    calibration: list[CalibrationPoint] = Field(
        default_factory=list,
        description="At least 4 pixel <-> floor point pairs, not all on one line. Only a "
        "browser camera (webrtc://) may have none: its detections are then shown in the web "
        "app but not placed on tracks or fused into the facility state.",
    )
    pose: CameraPose | None = Field(
        default=None, description="Camera pose, used by the simulator to render this view."
    )

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        parsed = urlparse(v)
        shown = redact_url(v)  # errors are logged and answered by the API: no passwords
        if not parsed.scheme:
            raise ValueError(
                f"URL {shown!r} has no scheme; write e.g. rtsp://192.0.2.10:554/stream1"
            )
        if parsed.scheme not in SOURCE_SCHEMES:
            raise ValueError(
                f"URL scheme {parsed.scheme!r} is not supported; use one of "
                + ", ".join(f"{s}://" for s in SOURCE_SCHEMES)
            )
        if parsed.scheme != "file" and not parsed.hostname:
            raise ValueError(f"URL {shown!r} has no host; write e.g. rtsp://192.0.2.10:554/stream1")
        try:
            _ = parsed.port
        except ValueError:
            raise ValueError(
                f"URL {shown!r} has a bad port; write a number from 1 to 65535, e.g. "
                "rtsp://192.0.2.10:554/stream1"
            ) from None
        if parsed.scheme == "file" and not parsed.path:
            raise ValueError("file:// URL has no path; write e.g. file:///data/cam1.mp4")
        if parsed.scheme == "webrtc" and (
            parsed.port or parsed.path not in ("", "/") or parsed.query or "@" in parsed.netloc
        ):
            raise ValueError(
                f"URL {shown!r}: a browser camera is named by its id alone; write "
                "webrtc://<camera id>, e.g. webrtc://cam-phone"
            )
        return v

    @model_validator(mode="after")
    def _webrtc_names_itself(self) -> Camera:
        if self.webrtc and urlparse(self.source).netloc != self.id:
            raise ValueError(
                f"source {self.source!r} names another camera; a browser camera's source is "
                f"webrtc://<its own id>: write webrtc://{self.id}"
            )
        return self

    @property
    def webrtc(self) -> bool:
        """Streamed by a browser to the web app (webrtc://), not read by a capture process."""
        return self.source.startswith("webrtc://")

    @field_validator("calibration")
    @classmethod
    def _enough_points(
        cls, v: list[CalibrationPoint], info: ValidationInfo
    ) -> list[CalibrationPoint]:
        source = str(info.data.get("source", ""))
        if not v and source.startswith("webrtc://"):
            return v  # an uncalibrated browser camera: shown, not fused
        if len(v) < 4:
            raise ValueError(
                f"has {len(v)} point pairs; measure at least 4 pixel <-> floor pairs "
                "(corners of a floor area the camera sees)"
            )
        return v

    @property
    def calibrated(self) -> bool:
        """Whether its pixels map to the floor (only a browser camera may lack calibration)."""
        return bool(self.calibration)

    @model_validator(mode="after")
    def _usable_homography(self) -> Camera:
        if not self.calibrated:
            return self
        pixels = [p.pixel for p in self.calibration]
        floor = [p.floor for p in self.calibration]
        try:
            _ = self.pixel_to_floor
            # Name the pair the others disagree with, not merely the largest residual: one bad
            # pair drags a least-squares fit towards itself and an innocent pair gets blamed.
            worst, off_m = least_consistent_point(pixels, floor)
        except DegenerateHomographyError as exc:
            raise ValueError(
                f"calibration is degenerate ({exc}); pick points spread over the image, "
                "no three on one line"
            ) from None
        if off_m > 0.5:
            raise ValueError(
                f"calibration point {worst} is {off_m:.2f} m off the homography the other points "
                "give; re-measure it (pixel and floor must show the same spot)"
            )
        for i, p in enumerate(self.calibration):
            if not (0 <= p.pixel[0] <= self.width and 0 <= p.pixel[1] <= self.height):
                raise ValueError(
                    f"calibration point {i} pixel {list(p.pixel)} is outside the "
                    f"{self.width}x{self.height} image; fix the pixel or the width/height"
                )
        return self

    @cached_property
    def pixel_to_floor(self) -> FloatArray:
        """Homography from image pixels to facility floor metres."""
        if not self.calibrated:
            raise ValueError(
                f"camera {self.id!r} has no calibration, so its pixels cannot be placed on "
                "the floor; add at least 4 pixel <-> floor pairs to its calibration"
            )
        return fit_homography(
            [p.pixel for p in self.calibration], [p.floor for p in self.calibration]
        )

    @cached_property
    def floor_to_pixel(self) -> FloatArray:
        """Homography from facility floor metres to image pixels."""
        return np.asarray(np.linalg.inv(self.pixel_to_floor))

    def floor_points(self, pixels: list[Point2]) -> FloatArray:
        """Floor metres shown at the given pixels."""
        return apply_homography(self.pixel_to_floor, pixels)


class PositionEstimatorSettings(StrictModel):
    """Settings of a flow's position estimator."""

    weights: str = Field(description="Path to YOLO weights (.pt or .onnx), relative to the config.")
    model_version: str = Field(description="Version label published with every estimate.")
    imgsz: int = Field(default=640, ge=64, le=2048, description="Inference input size, pixels.")
    confidence: float = Field(default=0.35, gt=0, lt=1, description="Minimum detection confidence.")
    max_batch: int = Field(default=8, ge=1, le=256, description="Frames per inference batch.")
    max_wait_ms: int = Field(default=50, ge=0, le=5000, description="Max wait to fill a batch.")


class PlateOcrSettings(StrictModel):
    """Settings of a flow's plate reader."""

    min_plate_confidence: float = Field(default=0.6, ge=0, le=1, description="Below: unreadable.")
    reread_after_s: float = Field(
        default=10,
        ge=0,
        description="A plate that stands where a camera read it is read again this often "
        "(its frames in between are not fetched, the reading is reused); 0 reads every frame.",
    )


class StateEstimatorSettings(StrictModel):
    """Settings of a flow's state estimator: every tuning value of the fusion tracker.

    The tracker follows each locomotive as a rigid body in the 1-D space of its track (see
    ``services/state_estimator/README.md``). Each value says what it is for; the defaults are
    tuned on the development set of ``depotwatch eval suite`` and reported on its validation set.
    """

    stale_after_s: float = Field(
        default=30, gt=0, description="A camera silent this long is stale; so is what only it saw."
    )
    heartbeat_s: float = Field(default=5, gt=0, description="Publish state at least this often.")
    end_label_offset_m: float = Field(
        default=0.3,
        ge=0,
        le=2,
        description="Detected ends lie this far inside the true ends (detector label convention).",
    )
    pairing_tolerance_m: float = Field(
        default=1.2,
        gt=0,
        description="A head and a tail form a new locomotive when their distance (corrected for "
        "the label offset) is within this of a model length (detector noise on two ends).",
    )
    pairing_window_s: float = Field(
        default=10.0,
        gt=0,
        description="Unexplained ends pair or stand alone only while seen this recently.",
    )
    association_gate_m: float = Field(
        default=2.0,
        gt=0,
        description="A detected end is this locomotive's end only within this distance of where "
        "the track predicts it (noise plus one frame of movement at shunting speed).",
    )
    gate_growth_mps: float = Field(
        default=0.5,
        ge=0,
        description="An end's gate grows by this per second it goes unseen (in a blind spot "
        "a moving locomotive may speed up or brake), up to inferred_end_gate_m; an end never "
        "seen grows from inferred_end_gate_m up to hidden_body_gate_m.",
    )
    inferred_end_gate_m: float = Field(
        default=3.5,
        gt=0,
        description="Gate for an end never seen yet (its place comes from an assumed model, "
        "whose length may be off by the spread of the fleet's lengths).",
    )
    hidden_body_gate_m: float = Field(
        default=6.0,
        gt=0,
        description="Largest gate of an end never seen: inferred_end_gate_m grows by "
        "gate_growth_mps per second the whole locomotive goes unseen (one driving through a "
        "blind stretch may be further along than its last speed says), up to this.",
    )

    @model_validator(mode="after")
    def _gates_grow(self) -> StateEstimatorSettings:
        if self.hidden_body_gate_m < self.inferred_end_gate_m:
            raise ValueError(
                f"hidden_body_gate_m ({self.hidden_body_gate_m}) must be at least "
                f"inferred_end_gate_m ({self.inferred_end_gate_m}): it is how far that gate "
                "may grow; raise hidden_body_gate_m or lower inferred_end_gate_m"
            )
        return self

    swap_cost_m: float = Field(
        default=0.6,
        ge=0,
        description="Cost, in metres, of matching a detected end to the other kind of end: "
        "side-angle cameras swap head and tail labels, so a swap is unlikely, not impossible.",
    )
    merge_m: float = Field(
        default=1.5,
        gt=0,
        description="Unexplained ends of different frames closer than this are one end.",
    )
    position_gain: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Share of a detected end's deviation from the prediction that is believed "
        "(alpha of an alpha-beta filter; lower smooths noise, higher follows moves).",
    )
    velocity_gain: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Speed gained per metre of deviation, per second (beta of the filter).",
    )
    velocity_memory_s: float = Field(
        default=20.0,
        gt=0,
        description="A speed no detection confirms fades linearly to zero over this long after "
        "its last measurement, so a hidden locomotive moves on for half this long at that "
        "speed (one driving out through a stretch no camera shows leaves; none is driven on "
        "for ever).",
    )
    max_speed_mps: float = Field(
        default=5.0, gt=0, description="Speed estimates are clamped to this (depot speed limit)."
    )
    rigid_after_s: float = Field(
        default=2.0,
        ge=0,
        description="An end unseen this long follows its seen end rigidly at the locomotive's "
        "length instead of keeping its own last measurement.",
    )
    length_gain: float = Field(
        default=0.3,
        ge=0,
        le=1,
        description="How strongly a known model length pulls two measured ends to that length.",
    )
    birth_min_hits: int = Field(
        default=2,
        ge=1,
        description="Detections an unexplained end needs before it can start a locomotive.",
    )
    birth_settle_s: float = Field(
        default=1.0,
        ge=0,
        description="Unexplained ends pair only once seen this long: every camera reports "
        "first, so the best-fitting pairing is chosen among all ends, not the first found.",
    )
    lone_end_min_hits: int = Field(
        default=3,
        ge=1,
        description="Detections a lone end (partner never seen) needs to start a locomotive.",
    )
    lone_end_confidence: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Detection confidence a lone end needs to start a locomotive.",
    )
    lone_end_wait_s: float = Field(
        default=6.0,
        ge=0,
        description="A lone end whose body may run either way waits this long for evidence "
        "(its partner, a plate) before the likelier way is taken.",
    )
    loose_end_misses: int = Field(
        default=2,
        ge=1,
        description="An unexplained end not detected this many times where a camera shows its "
        "spot is dropped (a false detection or a locomotive that moved on).",
    )
    existence_hit: float = Field(
        default=0.35, gt=0, le=1, description="Existence gained per detected end."
    )
    existence_miss: float = Field(
        default=0.75,
        gt=0,
        lt=1,
        description="Existence is multiplied by this per end a camera shows but did not detect.",
    )
    existence_birth: float = Field(
        default=0.6, gt=0, le=1, description="Existence of a newly started locomotive."
    )
    existence_drop: float = Field(
        default=0.2,
        ge=0,
        lt=1,
        description="A locomotive whose existence falls below this is dropped.",
    )
    view_edge_m: float = Field(
        default=0.5,
        ge=0,
        description="An end this close to an image edge is often cut off and missed: such a "
        "spot does not count as shown.",
    )
    occluder_margin_m: float = Field(
        default=0.5,
        description="Locomotives on nearer tracks are widened by this when deciding what they "
        "hide (the floor-only sightline model errs towards 'hidden': a hidden end that is not "
        "detected is no evidence of departure).",
    )
    overlap_m: float = Field(
        default=1.0,
        ge=0,
        description="Two locomotives on one track may overlap this much (measurement noise); "
        "beyond it they cannot both stand there as measured (see contact_m).",
    )
    contact_m: float = Field(
        default=2.5,
        ge=0,
        description="Two locomotives on one track overlapping by more than overlap_m but at most "
        "this are a coupled pair measured into each other: the one with less evidence is pushed "
        "back to touch the other instead of being dropped.",
    )
    plate_inset_m: float = Field(
        default=1.0,
        ge=0,
        description="Plates hang about this far inside the cab end: a reading belongs to the "
        "locomotive whose cab is that far from it.",
    )
    plate_margin_m: float = Field(
        default=2.0,
        ge=0,
        description="A plate placed through the floor homography lands up to this far off its "
        "locomotive (it hangs above the floor).",
    )
    plate_min_evidence: float = Field(
        default=1.6,
        ge=0,
        description="Summed reading confidence a plate needs before it is shown (one misread "
        "never names a locomotive).",
    )
    plate_dominance: float = Field(
        default=0.75,
        gt=0.5,
        le=1,
        description="Share of all plate evidence the shown plate must hold; below it the plate "
        "is unknown rather than possibly wrong.",
    )
    pending_vote_s: float = Field(
        default=15.0,
        ge=0,
        description="A plate reading with no locomotive under it waits this long for one.",
    )
    length_fit_m: float = Field(
        default=0.5,
        ge=0,
        description="A measured length names a model only when one model alone is this close.",
    )
    duplicate_plate_s: float = Field(
        default=10.0,
        ge=0,
        description="A plate is unique: of two locomotives showing the same plate, one not "
        "seen for this long after the other was is a stale copy (the locomotive moved on "
        "unseen) and is dropped. Two seen about the same time are both kept.",
    )
    departed_keep_s: float = Field(
        default=180.0,
        ge=0,
        description="A locomotive that left through a gate is no longer counted, but it may "
        "still stand just outside, in view of cameras inside, hiding ends on farther tracks: "
        "for this long it is kept as something that may hide them (between where it left and "
        "where its speed would have taken it), unless a locomotive is tracked there. 0: off.",
    )


class Flow(StrictModel):
    """A named set of estimator versions and settings (prod, dev, ...).

    A stage that is not set is not run for this flow; ``positions_from`` / ``identities_from``
    let a flow's state estimator read another flow's estimates (mixed flows), and
    ``positions_from`` also gives its plate reader that flow's plate boxes to read.
    """

    description: str = Field(default="", description="What this flow is for.")
    position_estimator: PositionEstimatorSettings | None = Field(
        default=None, description="Position estimator settings, or null to not run one."
    )
    plate_ocr: PlateOcrSettings | None = Field(
        default=None, description="Plate reader settings, or null to not run one."
    )
    state_estimator: StateEstimatorSettings | None = Field(
        default=None, description="State estimator settings, or null to not run one."
    )
    positions_from: str | None = Field(
        default=None,
        description="Read positions (and, for the plate reader, their plate boxes) from this "
        "flow instead of our own.",
    )
    identities_from: str | None = Field(
        default=None, description="Read identities from this flow instead of our own."
    )


class LocomotiveModel(StrictModel):
    """A locomotive model in the fleet."""

    name: str = Field(min_length=1, max_length=32, description="Model name, e.g. TEM2.")
    length_m: float = Field(gt=3, lt=60, description="Length over couplers, metres.")
    plate_pattern: str = Field(description="Regular expression every plate of this model matches.")
    livery: tuple[int, int, int] = Field(
        default=(40, 90, 160), description="Body colour [R, G, B] (simulator)."
    )

    @field_validator("plate_pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(
                f"is not a valid regular expression ({exc}); fix the pattern"
            ) from None
        return v

    def plate_matches(self, text: str) -> bool:
        """Whether ``text`` is a plate of this model."""
        return re.fullmatch(self.plate_pattern, text) is not None


class CrossReferenceError(ValueError):
    """Several problems that involve more than one field (duplicates, unknown references)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class FacilityConfig(StrictModel):
    """The whole facility: what operators edit and every service reads."""

    facility_id: Identifier = Field(description="Facility id; the key of facility-state messages.")
    name: str = Field(default="", description="Display name.")
    tracks: list[Track] = Field(min_length=1, description="Tracks on the floor.")
    cameras: list[Camera] = Field(min_length=1, description="Cameras.")
    flows: dict[str, Flow] = Field(min_length=1, description="Flows by name; prod is the default.")
    locomotive_models: list[LocomotiveModel] = Field(
        min_length=1, description="Locomotive models in the fleet."
    )

    @field_validator("flows")
    @classmethod
    def _flow_names(cls, v: dict[str, Flow]) -> dict[str, Flow]:
        for name in v:
            if not re.match(FLOW_NAME_PATTERN, name):
                raise ValueError(
                    f"flow name {name!r} must be lower-case letters, digits and '-', "
                    "starting with a letter (it becomes part of topic names)"
                )
        return v

    @model_validator(mode="after")
    def _cross_references(self) -> FacilityConfig:
        problems = cross_reference_problems(self)
        if problems:
            raise CrossReferenceError(problems)
        return self

    def camera(self, camera_id: str) -> Camera:
        """The camera with this id (KeyError names the known ones)."""
        for cam in self.cameras:
            if cam.id == camera_id:
                return cam
        known = ", ".join(c.id for c in self.cameras)
        raise KeyError(f"no camera {camera_id!r} in the facility config (known: {known})")

    def track(self, track_id: str) -> Track:
        """The track with this id."""
        for t in self.tracks:
            if t.id == track_id:
                return t
        raise KeyError(f"no track {track_id!r} in the facility config")

    def flow(self, name: str) -> Flow:
        """The flow with this name (KeyError names the known ones)."""
        if name not in self.flows:
            known = ", ".join(self.flows)
            raise KeyError(f"no flow {name!r} in the facility config (known: {known})")
        return self.flows[name]

    def locomotive_model(self, name: str) -> LocomotiveModel:
        """The locomotive model with this name."""
        for m in self.locomotive_models:
            if m.name == name:
                return m
        raise KeyError(f"no locomotive model {name!r} in the facility config")

    @property
    def enabled_cameras(self) -> list[Camera]:
        """Cameras to capture (by a capture process or, for webrtc://, by the web app)."""
        return [c for c in self.cameras if c.enabled]

    @property
    def captured_cameras(self) -> list[Camera]:
        """Enabled cameras a capture process reads (all but browser cameras)."""
        return [c for c in self.enabled_cameras if not c.webrtc]


def _duplicates(values: list[str]) -> list[str]:
    return sorted(v for v, n in Counter(values).items() if n > 1)


def cross_reference_problems(cfg: FacilityConfig) -> list[str]:
    """Problems that involve several fields, each as ``field: problem; fix``."""
    problems = reference_problems(cfg.model_dump())
    for i, cam in enumerate(cfg.cameras):
        if cam.pose is not None and cam.calibrated:
            problems += _pose_agreement(i, cam)
    return problems


def _entry_ids(data: Mapping[str, Any], key: str, attr: str) -> list[str] | None:
    """The string ``attr`` of each entry of the list ``data[key]``; None when it is no list."""
    entries = data.get(key)
    if not isinstance(entries, list):
        return None
    return [e[attr] for e in entries if isinstance(e, Mapping) and isinstance(e.get(attr), str)]


def reference_problems(data: Mapping[str, Any]) -> list[str]:
    """Duplicate ids and unknown references, read from the raw (possibly invalid) mapping.

    Reading raw data rather than the validated model lets :func:`parse_facility` report these
    beside field errors, so one run names every problem in the file.
    """
    problems: list[str] = []
    for what, attr in (("tracks", "id"), ("cameras", "id"), ("locomotive_models", "name")):
        for dup in _duplicates(_entry_ids(data, what, attr) or []):
            problems.append(f"{what}: id {dup!r} is used twice; give each entry its own id")
    track_ids = _entry_ids(data, "tracks", "id")
    cameras = data.get("cameras")
    if track_ids is not None and isinstance(cameras, list):
        known = sorted(set(track_ids))
        for i, cam in enumerate(cameras):
            refs = cam.get("tracks") if isinstance(cam, Mapping) else None
            for tid in refs if isinstance(refs, list) else []:
                if isinstance(tid, str) and tid not in known:
                    problems.append(
                        f"cameras[{i}].tracks: unknown track {tid!r}; "
                        f"use one of {known} or add the track"
                    )
    flows = data.get("flows")
    if not isinstance(flows, Mapping):
        return problems
    for name, flow in flows.items():
        if not isinstance(flow, Mapping):
            continue
        for attr, stage in (
            ("positions_from", "position_estimator"),
            ("identities_from", "plate_ocr"),
        ):
            ref = flow.get(attr)
            if ref is None:
                continue
            if ref not in flows:
                problems.append(
                    f"flows.{name}.{attr}: unknown flow {ref!r}; use one of {sorted(flows)}"
                )
            elif not isinstance(flows[ref], Mapping) or flows[ref].get(stage) is None:
                problems.append(
                    f"flows.{name}.{attr}: flow {ref!r} runs no {stage}; point at a flow that does"
                )
    return problems


def _pose_agreement(index: int, cam: Camera) -> list[str]:
    """A simulated camera's calibration must agree with its pose (else labels would be wrong)."""
    assert cam.pose is not None
    h = pinhole_floor_homography(
        cam.pose.position, cam.pose.look_at, cam.pose.hfov_deg, cam.width, cam.height
    )
    pixels = apply_homography(h, [p.floor for p in cam.calibration])
    off = np.linalg.norm(pixels - np.asarray([p.pixel for p in cam.calibration]), axis=1)
    worst = int(np.argmax(off))
    if not np.isfinite(off[worst]) or off[worst] > 3.0:
        return [
            f"cameras[{index}].calibration: point {worst} is {off[worst]:.1f} px from where the "
            "pose projects it; re-derive the calibration with `depotwatch sim calibrate` "
            "or fix the pose"
        ]
    return []


class ConfigError(Exception):
    """The facility config cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + f"\n{source}: ".join(problems))

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, list[str]]]:
        # Rebuilt from its own arguments: raised in a worker process (the suite's pool), it
        # must reach the parent, which otherwise waits for ever on a result it cannot unpickle.
        return ConfigError, (self.source, self.problems)


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<file>"


_PYDANTIC_FIXES = {
    "missing": "add it",
    "extra_forbidden": "remove it or check its spelling",
}


def validation_problems(exc: ValidationError) -> list[str]:
    """One line per problem in a facility-config ValidationError."""
    lines: list[str] = []
    for err in exc.errors():
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, CrossReferenceError):
            lines += ctx_error.problems
            continue
        loc = _format_loc(tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        fix = _PYDANTIC_FIXES.get(err["type"])
        if err["type"] == "missing":
            msg = "is required"
        elif err["type"] == "extra_forbidden":
            msg = "is not a known field"
        elif (err.get("ctx") or {}).get("pattern") == IDENTIFIER_PATTERN:
            msg = f"{err['input']!r} is not a valid id"
            fix = "use letters, digits, '_', '.', '-' (at most 63), starting with a letter or digit"
        lines.append(f"{loc}: {msg}" + (f"; {fix}" if fix else ""))
    return lines


def parse_facility(data: Any, source: str = "<facility>") -> FacilityConfig:
    """Validate already-parsed YAML; raises :class:`ConfigError` listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError(source, ["the file must be a YAML mapping with facility_id, tracks, ..."])
    try:
        return FacilityConfig.model_validate(data)
    except ValidationError as exc:
        problems = validation_problems(exc)
        # Pydantic runs the cross-field checks only when every field is valid; run them on the
        # raw data too so a single pass reports every problem.
        problems += [p for p in reference_problems(data) if p not in problems]
        raise ConfigError(source, problems) from None


def load_facility(path: str | Path) -> FacilityConfig:
    """Read and validate a facility YAML file; raises :class:`ConfigError` listing every problem."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(
            str(p), ["file not found; pass --config PATH or set DEPOTWATCH_FACILITY_CONFIG"]
        ) from None
    except OSError as exc:
        raise ConfigError(str(p), [f"cannot be read ({exc.strerror})"]) from None
    return parse_facility_yaml(text, str(p))


def parse_facility_yaml(text: str, source: str = "<facility>") -> FacilityConfig:
    """Validate facility YAML text exactly as ``config check`` does a file (the API's camera
    changes go through here before anything is written)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [f"{where}not valid YAML ({problem}); fix the syntax"]) from None
    return parse_facility(data, source)


SECRET_QUERY_WORDS = ("pass", "pwd", "token", "secret", "key", "auth", "sig")
"""A query parameter whose name contains one of these holds a credential."""


def redact_url(url: str) -> str:
    """The URL without user:password or credential query parameters, for logs and API
    responses (``rtsp://***@192.0.2.7:554/s1``). Never raises, whatever the URL."""
    parsed = urlparse(url)
    netloc = parsed.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parsed.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(w in k.lower() for k, _ in pairs for w in SECRET_QUERY_WORDS):
        query = urlencode(
            [
                (k, "***" if any(w in k.lower() for w in SECRET_QUERY_WORDS) else v)
                for k, v in pairs
            ],
            safe="*",
        )
    if (netloc, query) == (parsed.netloc, parsed.query):
        return url
    return parsed._replace(netloc=netloc, query=query).geturl()


ModelName = Annotated[str, Field(min_length=1)]
SourceScheme = Literal["rtsp", "rtsps", "http", "https", "file"]
