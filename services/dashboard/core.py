"""What the built-in dashboard shows, computed from plain messages (no Kafka, no S3, no sockets).

:class:`DashboardState` keeps the latest facility state per flow, the latest frame and
detections per camera and the latest ground truth; every ``apply_*`` returns the events to push
to connected browsers. The page draws what these functions compute, so the geometry (locomotives
to scale along track polylines), the dev-vs-prod comparison and the accuracy figures are unit
tested here rather than in JavaScript.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas.api import CameraView, FlowView
from schemas.estimates import PositionEstimate
from schemas.facility import Camera, FacilityConfig, Track, redact_url
from schemas.facility_state import FacilityState, LocomotiveState
from schemas.frames import FrameRef
from schemas.geometry import point_at_position
from schemas.ground_truth import GroundTruth
from services.runtime.matching import SAME_LOCOMOTIVE_M, match_locomotives

FPS_WINDOW_S = 60.0
"""A camera's stored frame rate is counted over this last stretch."""
STALE_MIN_S = 10.0
"""A camera is stale after 3 frame periods without a frame, and never sooner than this."""

Point = tuple[float, float]
Event = dict[str, Any]
"""``{"type": "...", "data": {...}}``: one server-sent event."""


def facility_layout(cfg: FacilityConfig) -> dict[str, Any]:
    """The static part of the page: floor bounds, tracks, cameras, flows (metres)."""
    xs = [p[0] for t in cfg.tracks for p in t.polyline]
    ys = [p[1] for t in cfg.tracks for p in t.polyline]
    for cam in cfg.cameras:
        if cam.pose is not None:
            xs.append(cam.pose.position[0])
            ys.append(cam.pose.position[1])
    margin = 3.0
    return {
        "facility_id": cfg.facility_id,
        "name": cfg.name or cfg.facility_id,
        "bounds": {
            "x_min": min(xs) - margin,
            "y_min": min(ys) - margin,
            "x_max": max(xs) + margin,
            "y_max": max(ys) + margin,
        },
        "tracks": [
            {
                "id": t.id,
                "name": t.name or t.id,
                "polyline": [list(p) for p in t.polyline],
                "length_m": round(t.length_m, 2),
            }
            for t in cfg.tracks
        ],
        "cameras": [
            {
                "id": c.id,
                "enabled": c.enabled,
                "calibrated": c.calibrated,
                "width": c.width,
                "height": c.height,
                "tracks": list(c.tracks),
                "position": list(c.pose.position[:2]) if c.pose is not None else None,
            }
            for c in cfg.cameras
        ],
        "flows": list(cfg.flows),
        "models": {m.name: m.length_m for m in cfg.locomotive_models},
        "state_stale_after_s": STATE_STALE_AFTER_S,
    }


STATE_STALE_AFTER_S = 10.0
"""The page shows a flow's state in red once its newest frame is older than this."""


def track_path(track: Track, from_m: float, to_m: float) -> list[Point]:
    """Floor points of the stretch of ``track`` between two arc lengths, following its bends.

    The result runs from ``from_m`` to ``to_m`` (either order), through every polyline vertex
    in between, so a locomotive on a curved track is drawn along the curve.
    """
    lo, hi = sorted((from_m, to_m))
    cum = [0.0]
    for a, b in zip(track.polyline, track.polyline[1:], strict=False):
        cum.append(cum[-1] + ((b[0] - a[0]) ** 2 + (b[1] - a[1]) ** 2) ** 0.5)
    points = [point_at_position(track.polyline, lo)[0]]
    points += [
        (float(p[0]), float(p[1])) for p, s in zip(track.polyline, cum, strict=True) if lo < s < hi
    ]
    points.append(point_at_position(track.polyline, hi)[0])
    if from_m > to_m:
        points.reverse()
    return [(round(x, 3), round(y, 3)) for x, y in points]


def _loco_view(track: Track, loco: LocomotiveState) -> dict[str, Any]:
    return {
        "id": loco.locomotive_id,
        "track_id": track.id,
        "head_m": round(loco.head_m, 2),
        "tail_m": round(loco.tail_m, 2),
        "length_m": round(abs(loco.head_m - loco.tail_m), 2),
        # From tail to head, so the page can mark the head (cab) end at the last point.
        "path": [list(p) for p in track_path(track, loco.tail_m, loco.head_m)],
        "model": loco.model,
        "plate": loco.plate,
        "confidence": round(loco.confidence, 3),
        "cameras": list(loco.cameras),
        "last_seen": loco.last_seen.isoformat(),
        "stale": loco.stale,
    }


def state_view(cfg: FacilityConfig, state: FacilityState) -> dict[str, Any]:
    """A facility state as the page draws it; tracks unknown to the config are skipped."""
    tracks = {t.id: t for t in cfg.tracks}
    locos = [
        _loco_view(tracks[ts.track_id], loco)
        for ts in state.tracks
        if ts.track_id in tracks
        for loco in ts.locomotives
    ]
    frames = [c.last_frame_at for c in state.cameras if c.last_frame_at is not None]
    return {
        "flow": state.flow,
        "as_of": state.as_of.isoformat(),
        # The newest frame any camera contributed: what the state's age is measured from
        # (``as_of`` keeps moving with heartbeats even when no estimate arrives).
        "data_at": max(frames).isoformat() if frames else None,
        "locomotives": locos,
        "cameras": {c.camera_id: c.status for c in state.cameras},
        "unknown_tracks": sorted({ts.track_id for ts in state.tracks} - set(tracks)),
    }


@dataclass(frozen=True)
class _Loco:
    id: str
    track_id: str
    ends: tuple[float, float]
    model: str | None
    plate: str | None


def _locos(state: FacilityState) -> list[_Loco]:
    return [
        _Loco(lo.locomotive_id, ts.track_id, (lo.head_m, lo.tail_m), lo.model, lo.plate)
        for ts in state.tracks
        for lo in ts.locomotives
    ]


def _pair(
    left: Sequence[_Loco], right: Sequence[_Loco], gate_m: float
) -> tuple[list[tuple[_Loco, _Loco]], list[_Loco], list[_Loco]]:
    """The project's one locomotive matcher: (pairs, only in left, only in right)."""
    m = match_locomotives(
        [(a.track_id, *a.ends) for a in left], [(b.track_id, *b.ends) for b in right], gate_m
    )
    return (
        [(left[i], right[j]) for i, j in m.pairs],
        [left[i] for i in m.only_left],
        [right[j] for j in m.only_right],
    )


def compare_flows(
    a: FacilityState, b: FacilityState, gate_m: float = SAME_LOCOMOTIVE_M
) -> dict[str, Any]:
    """How two flows' states differ: locomotives only one sees, and disagreeing identities.

    ``differs`` lists, per flow, the locomotive ids to highlight on the page.
    """
    pairs, only_a, only_b = _pair(_locos(a), _locos(b), gate_m)
    identity = [(x, y) for x, y in pairs if (x.plate, x.model) != (y.plate, y.model)]
    total = len(pairs) + len(only_a) + len(only_b)
    return {
        "flows": [a.flow, b.flow],
        "matched": len(pairs),
        "only": {a.flow: [x.id for x in only_a], b.flow: [y.id for y in only_b]},
        "identity_mismatch": [
            {a.flow: x.id, b.flow: y.id, "plates": [x.plate, y.plate], "models": [x.model, y.model]}
            for x, y in identity
        ],
        "differs": {
            a.flow: sorted({x.id for x in only_a} | {x.id for x, _ in identity}),
            b.flow: sorted({y.id for y in only_b} | {y.id for _, y in identity}),
        },
        "agreement": 1.0 if total == 0 else round((len(pairs) - len(identity)) / total, 4),
    }


def accuracy(
    truth: GroundTruth, state: FacilityState, gate_m: float = SAME_LOCOMOTIVE_M
) -> dict[str, Any]:
    """One flow's state against the simulator's ground truth.

    ``detected``: share of true locomotives the flow reports (paired by the project's one
    matcher, :func:`services.runtime.matching.match_locomotives`); ``position_error_m``: mean
    absolute end error of those; ``plates``/``models``: share of matched locomotives with the
    right plate/model; ``false``: reported ones with no true counterpart.
    """
    true = [
        _Loco(t.locomotive_id, t.track_id, (t.head_m, t.tail_m), t.model, t.plate)
        for t in truth.locomotives
    ]
    pairs, _missed, false = _pair(true, _locos(state), gate_m)
    errors = [
        (abs(min(t.ends) - min(s.ends)) + abs(max(t.ends) - max(s.ends))) / 2 for t, s in pairs
    ]
    n = len(true)
    return {
        "flow": state.flow,
        "true_count": n,
        "reported_count": len(pairs) + len(false),
        "detected": 1.0 if n == 0 else round(len(pairs) / n, 4),
        "position_error_m": round(sum(errors) / len(errors), 3) if errors else None,
        "plates": round(sum(t.plate == s.plate for t, s in pairs) / len(pairs), 4)
        if pairs
        else None,
        "models": round(sum(t.model == s.model for t, s in pairs) / len(pairs), 4)
        if pairs
        else None,
        "false": len(false),
        "truth_tick": truth.tick,
    }


def frame_view(ref: FrameRef) -> dict[str, Any]:
    """A camera's latest frame: where the page fetches it and its size for the overlay."""
    return {
        "camera_id": ref.camera_id,
        "seq": ref.seq,
        "captured_at": ref.captured_at.isoformat(),
        "width": ref.width,
        "height": ref.height,
        "url": f"frames/{ref.camera_id}.jpg?seq={ref.seq}",
    }


def detections_view(est: PositionEstimate) -> dict[str, Any]:
    """Boxes of one position estimate, in image pixels, for the camera tile overlay."""
    return {
        "camera_id": est.camera_id,
        "flow": est.flow,
        "seq": est.frame.seq,
        "captured_at": est.frame.captured_at.isoformat(),
        "width": est.frame.width,
        "height": est.frame.height,
        "boxes": [
            {
                "cls": d.cls,
                "confidence": round(d.confidence, 3),
                "box": [
                    round(d.bbox.x1, 1),
                    round(d.bbox.y1, 1),
                    round(d.bbox.x2, 1),
                    round(d.bbox.y2, 1),
                ],
            }
            for d in est.detections
        ],
    }


def observed_fps(times: Sequence[datetime], now: datetime) -> float | None:
    """Frames per second over the last :data:`FPS_WINDOW_S`, counted up to ``now`` so a camera
    that went silent reads lower and lower (None before two frames in the window)."""
    recent = [t for t in times if 0 <= (now - t).total_seconds() <= FPS_WINDOW_S]
    if len(recent) < 2:
        return None
    span = (now - min(recent)).total_seconds()
    return round((len(recent) - 1) / span, 2) if span > 0 else None


def camera_stale(cam: Camera, last: FrameRef | None, now: datetime) -> bool:
    """Enabled and silent for 3 frame periods (at least :data:`STALE_MIN_S`), or never heard."""
    if not cam.enabled:
        return False
    if last is None:
        return True
    return (now - last.captured_at).total_seconds() > max(STALE_MIN_S, 3.0 / cam.fps)


@dataclass
class DashboardState:
    """Latest of everything the page shows; ``apply_*`` return the events to push."""

    config: FacilityConfig
    states: dict[str, FacilityState] = field(default_factory=dict)
    frames: dict[str, FrameRef] = field(default_factory=dict)
    detections: dict[tuple[str, str], PositionEstimate] = field(default_factory=dict)
    truth: GroundTruth | None = None
    frame_times: dict[str, deque[datetime]] = field(default_factory=dict)

    def apply_state(self, state: FacilityState) -> list[Event]:
        """A new facility state of one flow; older ones (by ``as_of``) are ignored."""
        if state.facility_id != self.config.facility_id:
            return []
        old = self.states.get(state.flow)
        if old is not None and old.as_of > state.as_of:
            return []
        self.states[state.flow] = state
        events: list[Event] = [{"type": "state", "data": state_view(self.config, state)}]
        events += self._derived_events()
        return events

    def apply_frame(self, ref: FrameRef) -> list[Event]:
        """A newly stored frame; replaces the camera's tile image."""
        old = self.frames.get(ref.camera_id)
        if old is not None and old.captured_at > ref.captured_at:
            return []
        self.frames[ref.camera_id] = ref
        times = self.frame_times.setdefault(ref.camera_id, deque(maxlen=4096))
        times.append(ref.captured_at)
        while times and (ref.captured_at - times[0]).total_seconds() > FPS_WINDOW_S:
            times.popleft()
        return [{"type": "frame", "data": frame_view(ref)}]

    def apply_positions(self, est: PositionEstimate) -> list[Event]:
        """Detections of a frame by one flow; drawn over the camera tile."""
        key = (est.camera_id, est.flow)
        old = self.detections.get(key)
        if old is not None and old.frame.captured_at > est.frame.captured_at:
            return []
        self.detections[key] = est
        return [{"type": "detections", "data": detections_view(est)}]

    def apply_truth(self, truth: GroundTruth) -> list[Event]:
        """The simulator's latest ground truth; accuracy is recomputed for every flow."""
        if truth.facility_id != self.config.facility_id:
            return []
        if self.truth is not None and self.truth.at > truth.at:
            return []
        self.truth = truth
        return self._derived_events()

    def _derived_events(self) -> list[Event]:
        events: list[Event] = []
        comparison = self.comparison()
        if comparison is not None:
            events.append({"type": "compare", "data": comparison})
        acc = self.accuracy()
        if acc:
            events.append({"type": "accuracy", "data": acc})
        return events

    def comparison(self) -> dict[str, Any] | None:
        """prod vs dev (or the first two flows with state), once both have published."""
        flows = [f for f in self.config.flows if f in self.states]
        if len(flows) < 2:
            return None
        first, second = ("prod", "dev") if {"prod", "dev"} <= set(flows) else flows[:2]
        return compare_flows(self.states[first], self.states[second])

    def accuracy(self) -> dict[str, dict[str, Any]]:
        """Accuracy of each flow against ground truth; empty without ground truth."""
        if self.truth is None:
            return {}
        return {flow: accuracy(self.truth, st) for flow, st in sorted(self.states.items())}

    def snapshot(self) -> dict[str, Any]:
        """Everything a newly connected page needs to draw at once."""
        return {
            "layout": facility_layout(self.config),
            "states": {f: state_view(self.config, s) for f, s in sorted(self.states.items())},
            "frames": {c: frame_view(r) for c, r in sorted(self.frames.items())},
            "detections": {
                f"{cam}/{flow}": detections_view(e)
                for (cam, flow), e in sorted(self.detections.items())
            },
            "compare": self.comparison(),
            "accuracy": self.accuracy(),
        }

    def set_config(self, cfg: FacilityConfig) -> list[Event]:
        """The facility config changed (a camera added...): the page redraws from a snapshot."""
        self.config = cfg
        return [{"type": "snapshot", "data": self.snapshot()}]

    def state_age_s(self, now: datetime) -> dict[str, float]:
        """Seconds since each flow's latest state (for the staleness metric)."""
        return {f: max(0.0, (now - s.as_of).total_seconds()) for f, s in self.states.items()}

    def camera_views(self, now: datetime) -> list[CameraView]:
        """Every configured camera (source without credentials) with its health per flow."""
        views = []
        for cam in self.config.cameras:
            last = self.frames.get(cam.id)
            health = {
                flow: h
                for flow, st in sorted(self.states.items())
                for h in st.cameras
                if h.camera_id == cam.id
            }
            views.append(
                CameraView(
                    camera=cam.model_copy(update={"source": redact_url(cam.source)}),
                    health=health,
                    last_frame=last,
                    fps=observed_fps(self.frame_times.get(cam.id, ()), now),
                    reconnects=last.reconnects if last is not None else None,
                    stale=camera_stale(cam, last, now),
                )
            )
        return views

    def flow_views(self, now: datetime) -> list[FlowView]:
        """Every configured flow with the age of its latest state."""
        views = []
        ages = self.state_age_s(now)
        for flow in self.config.flows:
            st = self.states.get(flow)
            views.append(
                FlowView(
                    flow=flow,
                    as_of=st.as_of if st else None,
                    age_s=round(ages[flow], 3) if st else None,
                    locomotives=sum(len(t.locomotives) for t in st.tracks) if st else 0,
                )
            )
        return views


def thin_states(states: Sequence[FacilityState], every_s: float) -> list[FacilityState]:
    """The states by event time, at most one per ``every_s`` (the first of each stretch)."""
    out: list[FacilityState] = []
    for st in sorted(states, key=lambda s: s.as_of):
        if not out or (st.as_of - out[-1].as_of).total_seconds() >= every_s:
            out.append(st)
    return out
