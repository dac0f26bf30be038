"""Responses of the REST API (``/api/v1``) that are not already a topic's message.

They are built from the message and config models (:class:`Camera`, :class:`CameraHealth`,
:class:`FrameRef`), so the API and the topics describe a camera or a state the same way.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from schemas.base import FlowName, StrictModel, UtcDatetime
from schemas.facility import Camera
from schemas.facility_state import CameraHealth, FacilityState
from schemas.frames import FrameRef


class CameraView(StrictModel):
    """A configured camera (its source without credentials) and how it is doing."""

    camera: Camera = Field(description="The camera as configured; source user:password is ***.")
    health: dict[FlowName, CameraHealth] = Field(
        default_factory=dict, description="Per flow: the state estimator's view of this camera."
    )
    last_frame: FrameRef | None = Field(
        default=None, description="The newest frame stored for this camera, if any yet."
    )
    fps: float | None = Field(
        default=None,
        ge=0,
        description="Frames per second stored over the last minute (null before two frames).",
    )
    reconnects: int | None = Field(
        default=None,
        ge=0,
        description="Times its capture reopened the stream since the capture started, as of "
        "the last frame (null: not reported).",
    )
    stale: bool = Field(
        description="True when the camera is enabled and no frame arrived for 3 frame periods "
        "(at least 10 s), or none arrived yet."
    )


class FlowView(StrictModel):
    """A flow of the facility and how fresh its published state is."""

    flow: FlowName = Field(description="Flow name (prod, dev, ...).")
    as_of: UtcDatetime | None = Field(
        default=None, description="Event time of its latest facility state (null: none yet)."
    )
    age_s: float | None = Field(
        default=None, ge=0, description="Seconds from that event time to now (null: none yet)."
    )
    locomotives: int = Field(ge=0, description="Locomotives in its latest state.")


class FlowComparison(StrictModel):
    """How two flows' latest states differ (the dashboard's dev-vs-prod view)."""

    flows: list[FlowName] = Field(min_length=2, max_length=2, description="The two flows.")
    matched: int = Field(ge=0, description="Locomotives both report at the same place.")
    only: dict[str, list[str]] = Field(description="Per flow: locomotive ids only it reports.")
    identity_mismatch: list[dict[str, Any]] = Field(
        description="Matched pairs whose plate or model differ (ids, plates, models)."
    )
    differs: dict[str, list[str]] = Field(description="Per flow: ids that disagree.")
    agreement: float = Field(ge=0, le=1, description="Share of locomotives both agree on.")


class FlowAccuracy(StrictModel):
    """One flow's latest state against the simulator's ground truth."""

    flow: FlowName = Field(description="The flow.")
    true_count: int = Field(ge=0, description="Locomotives in the ground truth.")
    reported_count: int = Field(ge=0, description="Locomotives the flow reports.")
    detected: float = Field(ge=0, le=1, description="Share of true locomotives reported.")
    position_error_m: float | None = Field(
        description="Mean absolute end error of matched locomotives, metres."
    )
    plates: float | None = Field(description="Share of matched ones with the right plate.")
    models: float | None = Field(description="Share of matched ones with the right model.")
    false: int = Field(ge=0, description="Reported locomotives with no true counterpart.")
    truth_tick: int = Field(description="Simulator tick of the ground truth used.")


class Agreement(StrictModel):
    """Flow vs flow and flow vs ground truth, from the latest states."""

    comparison: FlowComparison | None = Field(
        default=None, description="prod vs dev (or the first two flows), once both published."
    )
    accuracy: dict[FlowName, FlowAccuracy] = Field(
        default_factory=dict, description="Per flow, against ground truth (simulator only)."
    )


class Problem(StrictModel):
    """One problem of a request: for a camera change, as ``depotwatch config check`` words it."""

    field: str = Field(description="The field, e.g. cameras[3].calibration or query.start.")
    problem: str = Field(description="The whole line: field, what is wrong, and the fix.")


class Rejected(StrictModel):
    """A request refused as invalid (422): a camera change that would break the facility
    config, or a parameter out of range. Nothing was changed."""

    detail: str = Field(description="What was refused.")
    problems: list[Problem] = Field(description="Every problem, one per line.")


class StateHistory(StrictModel):
    """A flow's facility states over a time range, at most one per ``every_s``."""

    flow: FlowName = Field(description="The flow.")
    start: UtcDatetime = Field(description="Start of the range (inclusive).")
    end: UtcDatetime = Field(description="End of the range (inclusive).")
    every_s: float = Field(gt=0, description="At most one state per this many seconds.")
    states: list[FacilityState] = Field(description="The states, oldest first.")


class ApiError(StrictModel):
    """Any other refused request: what is wrong and what to do."""

    detail: str = Field(description="The problem and the fix, in one line.")


class Health(StrictModel):
    """The web application is up; how many browsers follow it and how much it has read."""

    ok: bool = Field(description="Always true when this answers.")
    clients: int = Field(ge=0, description="Browsers with an open event stream.")
    messages: int = Field(ge=0, description="Messages read from Kafka since start.")
    dropped: int = Field(ge=0, description="Events dropped for browsers too slow to keep up.")


class IceServer(StrictModel):
    """A STUN or TURN server both ends of a browser camera's connection use (RTCIceServer)."""

    urls: list[str] = Field(
        min_length=1, description="e.g. ['stun:stun.example.org:3478'] or ['turn:turn.lan:3478']."
    )
    username: str | None = Field(default=None, description="TURN user name.")
    credential: str | None = Field(default=None, description="TURN password.")


class BrowserCamera(StrictModel):
    """A camera whose source is webrtc://<id>: a browser or phone streams it from /webrtc."""

    id: str = Field(description="Camera id.")
    fps: float = Field(gt=0, description="Frames per second kept (by capture time).")
    width: int = Field(gt=0, description="Frames are stored at this width, pixels.")
    height: int = Field(gt=0, description="Frames are stored at this height, pixels.")
    tracks: list[str] = Field(description="Tracks the camera looks at.")
    enabled: bool = Field(description="Disabled cameras refuse streams.")
    calibrated: bool = Field(
        description="False without calibration: its detections are shown but not placed on "
        "tracks or fused into the facility state."
    )
    streaming: bool = Field(description="A browser is streaming this camera now.")
    since: UtcDatetime | None = Field(default=None, description="When that stream started.")
    frames: int = Field(ge=0, description="Frames kept from that stream so far.")


class BrowserCameras(StrictModel):
    """What the /webrtc page needs: the browser cameras and the ICE servers to use."""

    cameras: list[BrowserCamera] = Field(description="Cameras with a webrtc:// source.")
    ice_servers: list[IceServer] = Field(
        description="STUN/TURN servers (DEPOTWATCH_DASHBOARD_ICE_SERVERS); empty: direct "
        "connections only (same LAN)."
    )


class WebRtcOffer(StrictModel):
    """A browser's SDP offer to stream one camera."""

    sdp: str = Field(min_length=1, max_length=200_000, description="The SDP offer.")
    type: str = Field(pattern="^offer$", description="Always 'offer'.")
    client_id: str = Field(
        min_length=8,
        max_length=64,
        pattern="^[A-Za-z0-9_-]+$",
        description="Random id of the sending page; the same page may replace its own stream "
        "(reconnect) without taking over.",
    )
    takeover: bool = Field(
        default=False,
        description="Replace a stream another page is sending for this camera (else 409).",
    )


class WebRtcAnswer(StrictModel):
    """The server's SDP answer."""

    sdp: str = Field(description="The SDP answer.")
    type: str = Field(description="Always 'answer'.")
