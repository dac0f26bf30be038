"""Hand-built facility states and ground truth for compare tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schemas.facility_state import FacilityState, LocomotiveState, TrackState
from schemas.ground_truth import GroundTruth, TrueLocomotive

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def state(at_s: float, flow: str, **tracks: list[tuple[float, float, str | None]]) -> FacilityState:
    """A facility state with locomotives given as (head, tail, plate) per track."""
    return FacilityState(
        facility_id="depot-north",
        flow=flow,
        as_of=T0 + timedelta(seconds=at_s),
        tracks=[
            TrackState(
                track_id=t,
                locomotives=[
                    LocomotiveState(
                        locomotive_id=f"L{i}",
                        head_m=h,
                        tail_m=tl,
                        plate=p,
                        confidence=0.9,
                        last_seen=T0,
                    )
                    for i, (h, tl, p) in enumerate(tracks.get(t, []))
                ],
            )
            for t in ("T1", "T2", "T3")
        ],
    )


def truth(at_s: float, *locos: tuple[str, float, float, str]) -> GroundTruth:
    return GroundTruth(
        facility_id="depot-north",
        scenario="s",
        seed=1,
        tick=int(at_s),
        at=T0 + timedelta(seconds=at_s),
        locomotives=[
            TrueLocomotive(
                locomotive_id=f"x{i}", track_id=t, head_m=h, tail_m=tl, model="TEM2", plate=p
            )
            for i, (t, h, tl, p) in enumerate(locos)
        ],
    )
