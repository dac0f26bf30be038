"""What the tracker publishes: the facility state, and the "on change" rule."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

from schemas.estimates import IdentityEstimate, PositionEstimate
from schemas.facility_state import CameraHealth, FacilityState, LocomotiveState, TrackState
from services.state_estimator.fusion.config import FusionConfig
from services.state_estimator.fusion.identity import shown_identities
from services.state_estimator.fusion.state import FusionState, TrackedLocomotive

if TYPE_CHECKING:
    from services.state_estimator.fusion.core import FusionCore

STALE_CONFIDENCE = 0.5
"""Confidence factor of a locomotive every camera that saw it has gone silent on."""


def _round(x: float) -> float:
    # Centimetres: finer digits are noise and would make every frame look like a change.
    return round(x, 2)


def _camera_seen(state: FusionState, camera_id: str) -> datetime | None:
    clock = state.cameras.get(camera_id)
    seen = clock.captured_at if clock else None
    ident = state.identity_seen_at.get(camera_id)
    if ident is not None and (seen is None or ident > seen):
        seen = ident
    return seen


def _stale(
    config: FusionConfig, state: FusionState, loco: TrackedLocomotive, now: datetime
) -> bool:
    """Every camera that detected it is silent: what the state says of it is old news."""
    limit = timedelta(seconds=config.tuning.stale_after_s)
    if now - loco.last_seen <= limit:
        return False
    return all(
        (seen := _camera_seen(state, cam)) is None or now - seen > limit for cam in loco.cameras
    )


def render(
    config: FusionConfig, state: FusionState, as_of: datetime | None = None
) -> FacilityState:
    """The facility state at event time ``as_of`` (default: the newest event seen)."""
    now = as_of or state.watermark or datetime.fromtimestamp(0, UTC)
    tracks: dict[str, list[LocomotiveState]] = {t: [] for t in config.track_ids}
    identities = shown_identities(config, state.locomotives)
    for loco in sorted(state.locomotives, key=lambda x: (x.track_id, min(x.head_m, x.tail_m))):
        if loco.track_id not in tracks:
            continue
        stale = _stale(config, state, loco, now)
        confidence = loco.existence * (STALE_CONFIDENCE if stale else 1.0)
        who = identities[loco.locomotive_id]
        tracks[loco.track_id].append(
            LocomotiveState(
                locomotive_id=loco.locomotive_id,
                head_m=_round(loco.head_m),
                tail_m=_round(loco.tail_m),
                model=who.model,
                plate=who.plate,
                confidence=round(confidence, 3),
                cameras=sorted(loco.cameras),
                last_seen=loco.last_seen,
                stale=stale,
            )
        )
    cameras = []
    limit = timedelta(seconds=config.tuning.stale_after_s)
    for cam in sorted(config.camera_ids):
        seen = _camera_seen(state, cam)
        if cam in config.disabled_cameras:
            status: Literal["ok", "stale", "disabled"] = "disabled"
        elif seen is not None and now - seen <= limit:
            status = "ok"
        else:
            status = "stale"
        cameras.append(
            CameraHealth(
                camera_id=cam,
                status=status,
                last_frame_at=seen,
                calibrated=cam not in config.uncalibrated_cameras,
            )
        )
    return FacilityState(
        facility_id=config.facility_id,
        flow=config.flow,
        as_of=now,
        tracks=[TrackState(track_id=t, locomotives=locos) for t, locos in tracks.items()],
        cameras=cameras,
    )


def content_signature(state: FacilityState) -> str:
    """The state without its timestamps: equal signatures mean nothing a dashboard shows changed.

    ``as_of``, ``last_seen`` and ``last_frame_at`` move with every frame; publishing on them
    would turn "on every change" into "on every frame".
    """
    return state.model_dump_json(
        exclude={
            "as_of": True,
            "latency": True,
            "tracks": {"__all__": {"locomotives": {"__all__": {"last_seen"}}}},
            "cameras": {"__all__": {"last_frame_at"}},
        }
    )


def published_changes(
    core: FusionCore,
    estimates: Iterable[PositionEstimate | IdentityEstimate],
    state: FusionState | None = None,
) -> Iterator[FacilityState]:
    """The facility states the estimator publishes "on change" for ``estimates`` in order.

    The Faust app applies exactly this rule, so for a single-partition input the app's
    change messages equal these byte for byte (heartbeats aside, and but for the stage times
    the app adds as ``latency``).
    """
    current = state or FusionState()
    signature: str | None = None
    for est in estimates:
        current, accepted = core.apply(current, est)
        if not accepted:
            continue
        rendered = core.render(current)
        sig = content_signature(rendered)
        if sig != signature:
            signature = sig
            yield rendered
