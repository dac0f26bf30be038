"""The soak report: figures against their goals, from plain samples."""

from __future__ import annotations

import os

from services.benchmarks.soak import Samples, report, rss_bytes


def test_growth_after_warm_up_and_state_age_are_judged_against_the_goals() -> None:
    s = Samples(
        rss={
            "aggregator": [(0.0, 50_000_000), (400.0, 100_000_000), (3600.0, 104_000_000)],
            "sim": [(0.0, 80_000_000), (400.0, 100_000_000), (3600.0, 127_000_000)],
        },
        lag={"depotwatch.position-estimator.prod frames.v1": [(400.0, 3), (3600.0, 1)]},
        state_age=[(100.0, 40.0), (400.0, 1.5), (3600.0, 2.5)],
        drops={"position-estimator/prod": 12},
        restarts={"aggregator": 0, "sim": 1},
        batches=[(300.0, "frames.v1", 900), (1800.0, "x-estimates", 4000), (3600.0, "f", 1200)],
    )
    lines = report(s, warmup_s=300)
    text = "\n".join(lines)
    assert "aggregator" in text
    assert "4.0%" in text  # warm-up growth (50 -> 100 MB) is not counted
    assert "27.0%  MISS" in text
    assert "max 2.5 s" in text  # the 40 s before warm-up ended is not counted
    assert "restarts: {'sim': 1}" in text
    assert (
        "largest broker partition: 4000 batches (x-estimates, at 30 min; 1200 at the end)" in text
    )
    assert lines[-1] == "MISSED: RSS of sim grew 27%"


def test_a_soak_without_any_state_is_a_miss() -> None:
    assert report(Samples(), warmup_s=0)[-1] == "MISSED: no facility state after warm-up"


def test_rss_of_this_process_and_of_a_missing_one() -> None:
    assert (rss_bytes(os.getpid()) or 0) > 1_000_000
    assert rss_bytes(2**22 + 12345) is None


def test_two_overlapping_bodies_on_a_track_are_a_double_count() -> None:
    from datetime import UTC, datetime

    from schemas.facility_state import FacilityState, LocomotiveState, TrackState
    from services.benchmarks.faults import double_counts

    at = datetime(2026, 12, 1, tzinfo=UTC)

    def loco(lid: str, head: float, tail: float) -> LocomotiveState:
        return LocomotiveState(
            locomotive_id=lid, head_m=head, tail_m=tail, confidence=1.0, last_seen=at
        )

    state = FacilityState(
        facility_id="depot-north",
        flow="prod",
        as_of=at,
        tracks=[
            TrackState(track_id="T1", locomotives=[loco("a", 2, 19), loco("b", 20, 37)]),
            TrackState(track_id="T2", locomotives=[loco("c", 2, 19), loco("d", 5, 22)]),
        ],
    )
    assert double_counts(state) == ["T2: c and d overlap by 14.0 m"]
