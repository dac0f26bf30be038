"""Generated depots and scenarios: deterministic, valid, physically possible."""

from __future__ import annotations

import numpy as np
import pytest

from schemas.facility import parse_facility
from schemas.geometry import locate_on_polyline, point_at_position
from services.simulator.generated_depot import (
    generate_depot,
    generate_depot_data,
    generate_scenario,
    truth_problems,
)
from services.simulator.world import Keyframe, Scenario, ScriptedLocomotive
from services.state_estimator.coverage import facility_coverage

SEEDS = range(1, 9)


def test_same_seed_gives_the_same_depot_and_scenario() -> None:
    assert generate_depot_data(5) == generate_depot_data(5)
    assert generate_depot_data(5) != generate_depot_data(6)
    depot = generate_depot(5)
    assert generate_scenario(depot, 2) == generate_scenario(depot, 2)
    assert generate_scenario(depot, 2) != generate_scenario(depot, 3)


@pytest.mark.parametrize("seed", SEEDS)
def test_generated_depot_is_plausible(seed: int) -> None:
    data, gates = generate_depot_data(seed)
    facility = parse_facility(data, f"depot {seed}")
    assert 2 <= len(facility.tracks) <= 6
    assert 4 <= len(facility.cameras) <= 20
    assert all(40.0 <= t.length_m <= 150.0 for t in facility.tracks)
    assert set(gates) == {t.id for t in facility.tracks}
    assert {t.id: tuple(t.gates) for t in facility.tracks} == gates
    for cam in facility.cameras:
        assert cam.pose is not None
        assert 5.0 <= cam.pose.position[2] <= 14.0
        assert cam.source == f"rtsp://127.0.0.1:8554/{cam.id}"
    names = [m.name for m in facility.locomotive_models]
    assert names[:4] == ["TEM2", "ChME3", "2TE116", "TE33A"]
    assert len(names) <= 6
    for m in facility.locomotive_models[4:]:
        assert 12.0 <= m.length_m <= 25.0
        assert m.plate_matches(f"{m.name}-0042")
    # Neighbouring tracks are 4.5-6 m apart along their whole length (never crossing).
    for a, b in zip(facility.tracks, facility.tracks[1:], strict=False):
        for along in np.arange(8.0, min(a.length_m, b.length_m) - 8.0, 2.0):
            d = locate_on_polyline(b.polyline, point_at_position(a.polyline, along)[0]).distance_m
            assert 4.4 <= d <= 6.1


@pytest.mark.parametrize("seed", SEEDS)
def test_no_camera_sees_a_whole_locomotive_and_track_is_seen(seed: int) -> None:
    facility = generate_depot(seed).facility
    shortest = min(m.length_m for m in facility.locomotive_models)
    coverage = facility_coverage(facility)
    for cam_id, tracks in coverage.items():
        for track_id, intervals in tracks.items():
            for lo, hi in intervals:
                assert hi - lo < shortest, (cam_id, track_id, lo, hi)
    for track in facility.tracks:
        seen = np.zeros(int(track.length_m * 2) + 1, dtype=bool)
        pos = np.arange(len(seen)) / 2
        for tracks in coverage.values():
            for lo, hi in tracks.get(track.id, []):
                seen |= (pos >= lo - 0.25) & (pos <= hi + 0.25)
        assert seen.mean() > 0.9, (track.id, seen.mean())


def test_generated_truth_is_physically_possible_over_many_seeds() -> None:
    moved = 0
    for depot_seed in range(1, 13):
        depot = generate_depot(depot_seed)
        for scenario_seed in (1, 2, 3):
            scenario = generate_scenario(depot, scenario_seed)
            assert truth_problems(depot, scenario) == []
            moved += sum(len(loco.keyframes) > 1 for loco in scenario.locomotives)
    assert moved > 20  # shunting happens, the check is not vacuous


def test_truth_check_finds_overlaps_and_buffer_stop_overruns() -> None:
    depot = generate_depot(1)
    track = depot.facility.tracks[0]
    closed = depot.closed_ends(track.id)
    past = -5.0 if "start" in closed else track.length_m + 5.0
    other = depot.facility.tracks[1].id

    def parked(loco_id: str, track_id: str, head_m: float) -> ScriptedLocomotive:
        keys = [Keyframe(at_s=0, head_m=head_m)]
        return ScriptedLocomotive(id=loco_id, model="TEM2", track=track_id, keyframes=keys)

    scenario = Scenario(
        name="broken",
        duration_s=2,
        locomotives=[
            parked("A", track.id, 30),
            parked("B", track.id, 35),
            parked("C", other, 20),
            parked("D", other, 36.97),
        ],
    )
    if closed:
        scenario.locomotives.append(
            ScriptedLocomotive(
                id="E",
                model="TEM2",
                track=track.id,
                facing="start" if "start" in closed else "end",
                keyframes=[Keyframe(at_s=0, head_m=past)],
            )
        )
    problems = truth_problems(depot, scenario)
    assert "tick 0: A and B overlap on T1" in problems
    assert not any("C and D" in p for p in problems)  # coupled: touching is allowed
    assert any("past a buffer stop" in p for p in problems) == bool(closed)
