"""World model: scenarios, determinism, motion, ground truth."""

from __future__ import annotations

import itertools
import re

import pytest

from schemas.facility import FacilityConfig
from services.simulator.world import (
    ScenarioError,
    Simulation,
    builtin_scenarios,
    head_at,
    load_scenario,
)
from tests.simulator.scenes import scenario


def test_builtin_scenarios_load_and_cover_every_split() -> None:
    names = builtin_scenarios()
    splits = {load_scenario(n).split for n in names}
    assert {"demo", "train", "val", "test"} <= splits
    # Held-out test scenarios are their own files, never shared with train.
    train = {n for n in names if load_scenario(n).split == "train"}
    test = {n for n in names if load_scenario(n).split == "test"}
    assert train
    assert test
    assert not train & test


def test_same_seed_same_fleet_other_seed_other_fleet(facility: FacilityConfig) -> None:
    sc = load_scenario("train-busy")
    a = Simulation(facility, sc, seed=7).identities
    b = Simulation(facility, sc, seed=7).identities
    c = Simulation(facility, sc, seed=8).identities
    assert a == b
    assert [i.plate for i in a] != [i.plate for i in c]


def test_plates_match_their_models_pattern(facility: FacilityConfig) -> None:
    sim = Simulation(facility, load_scenario("train-pairs"), seed=3)
    assert len(sim.identities) >= 4
    for ident in sim.identities:
        assert re.match(ident.model.plate_pattern, ident.plate), ident.plate


def test_random_fleet_never_overlaps_on_a_track(facility: FacilityConfig) -> None:
    for seed in range(5):
        sim = Simulation(facility, load_scenario("train-busy"), seed=seed)
        for tick in (0, sim.ticks // 2, sim.ticks - 1):
            spans: dict[str, list[tuple[float, float]]] = {}
            for p in sim.state(tick).placements:
                spans.setdefault(p.identity.track_id, []).append(
                    tuple(sorted((p.head_m, p.tail_m)))  # type: ignore[arg-type]
                )
            for track_spans in spans.values():
                track_spans.sort()
                for (_, end), (start, _) in itertools.pairwise(track_spans):
                    assert start >= end - 1e-6


@pytest.mark.parametrize(
    ("t", "expected"),
    [(0.0, 0.0), (5.0, 0.0), (10.0, 0.0), (15.0, 10.0), (20.0, 20.0), (30.0, 20.0)],
)
def test_motion_eases_between_keyframes(t: float, expected: float) -> None:
    keys = ((10.0, 0.0), (20.0, 20.0))
    assert head_at(keys, t) == pytest.approx(expected)


def test_ground_truth_lists_locomotives_inside_the_depot_only(facility: FacilityConfig) -> None:
    sc = scenario(
        locomotives=[
            {"id": "IN", "model": "TEM2", "track": "T1", "keyframes": [{"at_s": 0, "head_m": 20}]},
            {
                "id": "OUT",
                "model": "TEM2",
                "track": "T2",
                "keyframes": [{"at_s": 0, "head_m": -30}],
            },
        ],
        outages=[{"camera": "cam-s2", "from_s": 10, "to_s": 20}],
    )
    sim = Simulation(facility, sc, seed=1)
    truth = sim.ground_truth(sim.state(30))  # 15 s at 0.5 s ticks
    assert [loco.locomotive_id for loco in truth.locomotives] == ["IN"]
    loco = truth.locomotives[0]
    assert (loco.head_m, loco.tail_m) == (20.0, pytest.approx(20.0 - 16.97))
    assert truth.cameras_down == ["cam-s2"]
    assert sim.ground_truth(sim.state(40)).cameras_down == []


def test_bad_scenarios_name_the_problem(facility: FacilityConfig) -> None:
    with pytest.raises(ScenarioError, match="duration_s"):
        scenario(duration_s=-1)
    with pytest.raises(ScenarioError, match="unknown track 'T9'"):
        Simulation(
            facility,
            scenario(
                locomotives=[{"id": "X", "track": "T9", "keyframes": [{"at_s": 0, "head_m": 1}]}]
            ),
            seed=1,
        )
    with pytest.raises(ScenarioError, match="no scenario 'nope'"):
        load_scenario("nope")


def _gaps(sim: Simulation, tick: int) -> list[float]:
    spans: dict[str, list[tuple[float, float]]] = {}
    for p in sim.state(tick).placements:
        lo, hi = sorted((p.head_m, p.tail_m))
        spans.setdefault(p.identity.track_id, []).append((lo, hi))
    gaps = []
    for track_spans in spans.values():
        track_spans.sort()
        gaps += [b[0] - a[1] for a, b in itertools.pairwise(track_spans)]
    return gaps


def test_demo_scenarios_cover_the_depot_situations(facility: FacilityConfig) -> None:
    day = Simulation(facility, load_scenario("depot-day"), seed=1)
    shunting = Simulation(facility, load_scenario("depot-shunting"), seed=1)
    first, last = day.ground_truth(day.state(0)), day.ground_truth(day.state(day.ticks - 1))
    ids_first = {loco.locomotive_id for loco in first.locomotives}
    ids_last = {loco.locomotive_id for loco in last.locomotives}
    assert ids_last - ids_first, "an arrival"
    assert ids_first - ids_last, "a departure"
    assert any(0.3 < g < 1.5 for g in _gaps(day, 0)), "two locomotives close together"
    assert any(abs(g) < 0.01 for g in _gaps(shunting, 0)), "coupled nose to tail"
    long_one = next(p for p in shunting.state(0).placements if p.identity.model.name == "TE33A")
    lo, hi = sorted((long_one.head_m, long_one.tail_m))
    assert lo < 10, "spans three 12 m camera views"
    assert hi > 24, "spans three 12 m camera views"
    assert day.light_level(0) != day.light_level(day.scenario.duration_s), "lighting changes"
    assert any(day.state(t).cameras_down for t in range(day.ticks)), "a camera drops out"
