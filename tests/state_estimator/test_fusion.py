"""Fusion tracker: plain estimates in, facility state out (no broker)."""

from __future__ import annotations

from typing import Any

import pytest
from state_builders import FACILITY, OFFSET, end, identity, position

from schemas.base import Message
from schemas.facility import FacilityConfig, load_facility
from schemas.facility_state import FacilityState, LocomotiveState
from services.state_estimator.fusion import FusionConfig, FusionCore, FusionState

# A TEM2 (16.97 m) on T1 with its cab at 2.0 m: cam-s1 sees x 0-12, cam-s2 x 12-24 of T1.
HEAD, TAIL = 2.0, 18.97


def feed(
    core: FusionCore, messages: list[Message], state: FusionState | None = None
) -> FusionState:
    state = state or FusionState()
    for msg in messages:
        state, _ = core.apply(state, msg)  # type: ignore[arg-type]
    return state


def locos(state: FacilityState, track: str) -> list[LocomotiveState]:
    return next(t.locomotives for t in state.tracks if t.track_id == track)


def frames(
    seconds: float, per_camera: dict[str, list[tuple[str, str, float]]], start_s: float = 0.0
) -> list[Message]:
    """Every camera's frames at 2 fps for ``seconds``; each shows the same ends."""
    out: list[Message] = []
    ticks = int(seconds * 2)
    for tick in range(ticks):
        at = start_s + tick * 0.5
        seq = int(at * 2)
        for i, (cam, ends) in enumerate(sorted(per_camera.items())):
            out.append(position(cam, seq, at + 0.01 * i, *(end(k, t, p) for k, t, p in ends)))
    return out


TEM2_VIEWS = {
    "cam-s1": [("head", "T1", HEAD + OFFSET)],
    "cam-s2": [("tail", "T1", TAIL - OFFSET)],
}


def test_head_and_tail_from_different_cameras_make_one_locomotive(core: FusionCore) -> None:
    out = core.render(feed(core, frames(3, TEM2_VIEWS)))
    (loco,) = locos(out, "T1")
    # The inward label offset is corrected once the orientation is known.
    assert loco.head_m == pytest.approx(HEAD, abs=0.01)
    assert loco.tail_m == pytest.approx(TAIL, abs=0.01)
    assert loco.cameras == ["cam-s1", "cam-s2"]
    assert loco.model is None  # TEM2 and ChME3 differ by 0.25 m: length alone says neither
    assert locos(out, "T2") == []


def test_a_single_frame_starts_nothing(core: FusionCore) -> None:
    state = feed(core, frames(0.5, TEM2_VIEWS))
    assert core.render(state).locomotive_count == 0


def test_ends_too_far_apart_for_any_model_do_not_pair(core: FusionCore) -> None:
    views = {"cam-s1": [("head", "T1", 2.0)], "cam-s3": [("tail", "T1", 30.0)]}
    state = feed(core, frames(3, views))
    assert all(not (lo.head_m < 3 and lo.tail_m > 29) for lo in locos(core.render(state), "T1"))


def test_two_locomotives_coupled_cab_to_cab_stay_two(core: FusionCore) -> None:
    # A TEM2 facing the gate (tail 2.0, cab 18.97) and one facing away (cab 19.07, tail 36.04):
    # cam-s2 sees both cabs 0.7 m apart, which must stay two ends.
    views = {
        "cam-s1": [("tail", "T1", 2.0 + OFFSET)],
        "cam-s2": [("head", "T1", 18.97 - OFFSET), ("head", "T1", 19.07 + OFFSET)],
        "cam-s3": [("tail", "T1", 36.04 - OFFSET)],
    }
    a, b = locos(core.render(feed(core, frames(3, views))), "T1")
    assert (a.head_m, a.tail_m) == pytest.approx((18.97, 2.0), abs=0.05)
    assert (b.head_m, b.tail_m) == pytest.approx((19.07, 36.04), abs=0.05)


def test_a_swapped_label_is_still_the_same_end(core: FusionCore) -> None:
    state = feed(core, frames(3, TEM2_VIEWS))
    swapped = {"cam-s1": [("tail", "T1", HEAD + OFFSET)], "cam-s2": [("tail", "T1", TAIL - OFFSET)]}
    state = feed(core, frames(1, swapped, start_s=3), state)
    (loco,) = locos(core.render(state), "T1")
    assert loco.head_m == pytest.approx(HEAD, abs=0.05)


def test_duplicate_and_late_frames_are_ignored(core: FusionCore) -> None:
    msgs = frames(3, TEM2_VIEWS)
    state = feed(core, msgs)
    again, accepted = core.apply(state, msgs[-1])  # type: ignore[arg-type]
    assert not accepted
    assert again is state
    _, accepted = core.apply(state, msgs[0])  # type: ignore[arg-type]
    assert not accepted


def test_state_round_trips_through_json(core: FusionCore) -> None:
    state = feed(core, frames(3, TEM2_VIEWS))
    restored = FusionState.model_validate_json(state.model_dump_json())
    assert core.render(restored) == core.render(state)


def test_apply_does_not_change_the_state_passed_in(core: FusionCore) -> None:
    state = feed(core, frames(3, TEM2_VIEWS))
    before = state.model_dump_json()
    core.apply(state, position("cam-s1", 99, 50.0))
    assert state.model_dump_json() == before


def test_standstill_with_nothing_shown_keeps_the_locomotive_and_its_id(core: FusionCore) -> None:
    state = feed(core, frames(3, TEM2_VIEWS))
    (first,) = locos(core.render(state), "T1")
    # Hours later, cameras that cannot show its ends (other tracks only) keep reporting.
    state = feed(core, frames(2, {"cam-n1": [], "cam-n2": []}, start_s=3600), state)
    (later,) = locos(core.render(state), "T1")
    assert later.locomotive_id == first.locomotive_id


def test_ends_shown_empty_remove_the_locomotive(core: FusionCore) -> None:
    state = feed(core, frames(3, TEM2_VIEWS))
    state = feed(core, frames(3, {"cam-s1": [], "cam-s2": []}, start_s=3), state)
    assert locos(core.render(state), "T1") == []


def test_moving_locomotive_keeps_its_id(core: FusionCore) -> None:
    state = feed(core, frames(3, TEM2_VIEWS))
    (first,) = locos(core.render(state), "T1")
    for step in range(1, 11):  # 1 m/s for 5 s
        shift = step * 0.5
        views = {
            "cam-s1": [("head", "T1", HEAD + OFFSET + shift)],
            "cam-s2": [("tail", "T1", TAIL - OFFSET + shift)],
        }
        state = feed(core, frames(0.5, views, start_s=3 + step * 0.5), state)
    (moved,) = locos(core.render(state), "T1")
    assert moved.locomotive_id == first.locomotive_id
    assert moved.head_m == pytest.approx(HEAD + 5, abs=0.8)


def test_locomotive_partly_outside_the_gate_is_placed_from_its_visible_end(
    core: FusionCore,
) -> None:
    # A TEM2 with its tail at 5 m and its cab 11.97 m outside the gate (x < 0): only the tail
    # is in the depot; every on-track place for its cab is shown empty.
    views: dict[str, list[tuple[str, str, float]]] = {
        "cam-s1": [("tail", "T1", 5.0 - OFFSET)],
        "cam-s2": [],
        "cam-s3": [],
    }
    state = feed(core, frames(4, views))
    (loco,) = locos(core.render(state), "T1")
    assert loco.tail_m == pytest.approx(5.0, abs=0.05)
    assert loco.head_m < 0


def test_an_assumed_body_is_corrected_when_its_far_end_is_detected(core: FusionCore) -> None:
    views: dict[str, list[tuple[str, str, float]]] = {
        "cam-s1": [("tail", "T1", 5.0 - OFFSET)],
        "cam-s2": [],
        "cam-s3": [],
    }
    state = feed(core, frames(4, views))
    # The far end turns out to stand inside: a 2TE116 whose cab is now seen at 23.15.
    views = {
        "cam-s1": [("tail", "T1", 5.0 + OFFSET)],
        "cam-s2": [("head", "T1", 23.15 - OFFSET)],
    }
    state = feed(core, frames(3, views, start_s=4), state)
    (loco,) = locos(core.render(state), "T1")
    assert loco.head_m == pytest.approx(23.15, abs=0.1)
    assert loco.tail_m == pytest.approx(5.0, abs=0.1)


def test_plate_read_right_many_times_and_wrong_twice_stays_right(core: FusionCore) -> None:
    state = feed(core, frames(3, TEM2_VIEWS))
    reads: list[Message] = [
        identity("cam-s1", 100 + i, 3 + i * 0.5, "T1", HEAD + 1.0, "TEM2-0001") for i in range(30)
    ]
    reads += [
        identity("cam-s1", 200 + i, 20 + i * 0.5, "T1", HEAD + 1.0, "TEM2-0007") for i in (0, 1)
    ]
    (loco,) = locos(core.render(feed(core, reads, state)), "T1")
    assert (loco.plate, loco.model) == ("TEM2-0001", "TEM2")


def test_one_reading_does_not_name_a_locomotive(core: FusionCore) -> None:
    state = feed(core, frames(3, TEM2_VIEWS))
    state = feed(core, [identity("cam-s1", 100, 3.0, "T1", HEAD + 1.0, "TEM2-0007")], state)
    (loco,) = locos(core.render(state), "T1")
    assert loco.plate is None


def test_a_redelivered_reading_counts_once(core: FusionCore) -> None:
    state = feed(core, frames(3, TEM2_VIEWS))
    read = identity("cam-s1", 100, 3.0, "T1", HEAD + 1.0, "TEM2-0001")
    state, first = core.apply(state, read)
    state, again = core.apply(state, read)
    assert first
    assert not again
    assert locos(core.render(state), "T1")[0].plate is None  # one reading, not two


def test_plate_read_where_no_end_is_seen_places_a_locomotive(core: FusionCore) -> None:
    # Both ends hidden from every camera, but its plate is read again and again.
    reads: list[Message] = []
    for i in range(20):
        reads.append(identity("cam-n2", i, i * 0.5, "T2", 20.0, "TE33A-0042"))
        reads.append(position("cam-n1", i, i * 0.5 + 0.01))
    state = feed(core, reads)
    (loco,) = locos(core.render(state), "T2")
    assert (loco.plate, loco.model) == ("TE33A-0042", "TE33A")
    assert abs(loco.tail_m - loco.head_m) == pytest.approx(21.70, abs=0.01)


def test_render_lists_every_track_and_camera(core: FusionCore) -> None:
    out = core.render(FusionState())
    assert [t.track_id for t in out.tracks] == ["T1", "T2", "T3"]
    assert len(out.cameras) == 8
    assert all(c.status == "stale" for c in out.cameras)


def test_a_camera_without_calibration_is_reported_but_sees_no_track(
    uncalibrated_facility: FacilityConfig,
) -> None:
    config = FusionConfig.from_facility(uncalibrated_facility, "prod")
    assert "cam-s1" not in config.coverage
    assert "cam-s1" not in config.sightlines
    assert "cam-s2" in config.coverage
    core = FusionCore(config)
    # Its frames arrive (detections shown in the web app, no track observations): it is alive.
    state = feed(core, frames(3, {"cam-s1": [], "cam-s2": TEM2_VIEWS["cam-s2"]}))
    out = core.render(state)
    health = {c.camera_id: c for c in out.cameras}
    assert health["cam-s1"].calibrated is False
    assert health["cam-s1"].status == "ok"
    assert all(c.calibrated for c in out.cameras if c.camera_id != "cam-s1")


def test_no_locomotive_is_placed_beyond_a_buffer_stop() -> None:
    # As the gate test above, but T1's start is a buffer stop: the tail at 5 m cannot belong
    # to a locomotive reaching out of the depot there, and every on-track place is empty.
    cfg = load_facility(FACILITY)
    tracks = [t.model_copy(update={"gates": ["end"]}) if t.id == "T1" else t for t in cfg.tracks]
    stopped = FusionCore(
        FusionConfig.from_facility(
            cfg.model_copy(update={"tracks": tracks}), "prod", cfg.flow("prod").state_estimator
        )
    )
    views: dict[str, list[tuple[str, str, float]]] = {
        "cam-s1": [("tail", "T1", 5.0 - OFFSET)],
        "cam-s2": [],
        "cam-s3": [],
    }
    assert locos(stopped.render(feed(stopped, frames(4, views))), "T1") == []


def _record(
    loco_id: str,
    head: float,
    tail: float,
    head_seen: bool,
    tail_seen: bool,
    track: str = "T1",
    last_seen_s: float = 0.0,
) -> Any:
    """A locomotive on ``track``, first seen at T0 and last ``last_seen_s`` after it (the ends
    marked seen then); an unseen tail is placed from an assumed TE33A."""
    from datetime import timedelta

    from state_builders import T0

    from services.state_estimator.fusion import TrackedLocomotive

    seen = T0 + timedelta(seconds=last_seen_s)
    return TrackedLocomotive(
        locomotive_id=loco_id,
        track_id=track,
        head_m=head,
        tail_m=tail,
        updated_at=seen,
        first_seen=T0,
        last_seen=seen,
        head_seen_at=seen if head_seen else None,
        tail_seen_at=seen if tail_seen else None,
        existence=1.0,
        assumed_model="TE33A" if not tail_seen else None,
    )


def test_an_assumed_end_yields_to_a_neighbour_seen_whole(core: FusionCore) -> None:
    from services.state_estimator.fusion.births import certain_span, yield_assumed_room

    # A: cab seen at 10 m, tail assumed 21.70 m away (TE33A); B: a TEM2 seen whole at 29-45.97.
    a = _record("a", 10.0, 31.7, head_seen=True, tail_seen=False)
    b = _record("b", 29.0, 45.97, head_seen=True, tail_seen=True)
    assert certain_span(core.config, a) == pytest.approx((10.0, 10.0 + 16.97))
    assert certain_span(core.config, b) == (29.0, 45.97)
    state = FusionState(locomotives=[a, b])
    yield_assumed_room(core.config, state, "T1")
    # The longest model that leaves B's body free: a 2TE116 (18.15 m).
    assert (a.assumed_model, a.tail_m) == ("2TE116", pytest.approx(28.15))
    assert (b.head_m, b.tail_m) == (29.0, 45.97)


def test_a_locomotive_seen_only_by_its_plate_moves_with_it(core: FusionCore) -> None:
    reads: list[Message] = []
    for i in range(20):
        reads.append(identity("cam-n2", i, i * 0.5, "T2", 20.0, "TE33A-0042"))
        reads.append(position("cam-n1", i, i * 0.5 + 0.01))
    state = feed(core, reads)
    (before,) = locos(core.render(state), "T2")
    moves: list[Message] = [
        identity("cam-n2", 20 + i, 10 + i * 0.5, "T2", 20.0 + 0.5 * (i + 1), "TE33A-0042")
        for i in range(10)
    ]
    (after,) = locos(core.render(feed(core, moves, state)), "T2")
    assert after.locomotive_id == before.locomotive_id
    assert after.head_m - before.head_m == pytest.approx(5.0, abs=1.0)


def test_a_plate_on_one_side_of_a_lone_cab_says_which_way_its_body_runs(
    core: FusionCore,
) -> None:
    # A cab at 30 m on T1; the stretch 0-24 m is shown empty, so only a body running out of
    # the gate at 48 m fits. A plate hanging on the 0 m side of the cab contradicts that body.
    views: dict[str, list[tuple[str, str, float]]] = {
        "cam-s1": [],
        "cam-s2": [],
        "cam-s3": [("head", "T1", 30.0 + OFFSET)],
        "cam-s4": [],
    }
    alone = locos(core.render(feed(core, frames(4, views))), "T1")
    assert [(x.head_m, x.tail_m > 48) for x in alone] == [(pytest.approx(30.0, abs=0.05), True)]
    plates: list[Message] = [
        identity("cam-s3", 100 + i, i * 0.5 + 0.02, "T1", 29.0, "TEM2-0001") for i in range(8)
    ]
    both = sorted([*frames(4, views), *plates], key=lambda m: m.frame.captured_at)  # type: ignore[attr-defined]
    assert locos(core.render(feed(core, both)), "T1") == []


@pytest.mark.parametrize(("unseen_s", "expected"), [(0.0, 2.0), (2.0, 3.0), (60.0, 3.5)])
def test_an_end_unseen_for_a_while_is_looked_for_further_away(
    core: FusionCore, unseen_s: float, expected: float
) -> None:
    from datetime import timedelta

    from state_builders import T0

    from services.state_estimator.fusion.tracking import gate

    loco = _record("a", 10.0, 26.97, head_seen=True, tail_seen=True)
    assert gate(core.config, loco, "head", T0 + timedelta(seconds=unseen_s)) == expected


def test_ends_detected_inside_a_body_no_camera_can_confirm_remove_it(core: FusionCore) -> None:
    # A locomotive left over where no camera shows its ends (cab outside the gate, tail where
    # two views meet), while cam-s3 keeps detecting another locomotive's cab inside its body.
    ghost = _record("ghost", -5.0, 36.2, head_seen=True, tail_seen=True)
    state = FusionState(locomotives=[ghost])
    views = {"cam-s3": [("head", "T1", 30.0)]}
    kept = feed(core, frames(0.5, views), state)
    assert [x.locomotive_id for x in kept.locomotives] == ["ghost"]
    gone = feed(core, frames(3, views), state)
    assert "ghost" not in [x.locomotive_id for x in gone.locomotives]


def test_a_new_end_that_fits_an_assumed_end_waits_to_be_that_end(core: FusionCore) -> None:
    from state_builders import T0

    from services.state_estimator.fusion.births import hypotheses
    from services.state_estimator.fusion.state import LooseEnd

    # A locomotive seen by its tail at 26.1 m, its cab assumed at 43.33 m (the middle model);
    # then a cab is detected at 47.6 m, which fits a TE33A from that tail: not a new one.
    placed = _record("placed", 43.33, 26.1, head_seen=False, tail_seen=True)
    cab = LooseEnd(
        end_id=1, track_id="T1", position_m=47.6, head_votes=2.7, hits=3, confidence=0.9,
        first_seen=T0, last_seen=T0, cameras=["cam-s4"], from_plate_only=False,
    )  # fmt: skip
    state = FusionState(locomotives=[placed], loose_ends=[cab])
    assert hypotheses(core.config, state, cab, T0) == []


@pytest.mark.parametrize("seen_through_first", [True, False])
def test_an_end_once_detected_past_a_nearer_locomotive_is_missed_there(
    core: FusionCore, seen_through_first: bool
) -> None:
    # cam-s1 looks at T2 (0-12 m) past T1, where a locomotive stands in front (its ends out
    # of cam-s1's view). The sightline model says T1's body hides T2's ends there.
    front = _record("front", -5.0, 36.0, True, True, track="T1")
    behind = _record("behind", 5.0, 21.97, True, True, track="T2")
    state = FusionState(locomotives=[front, behind])
    if seen_through_first:
        # cam-s1 detects the T2 cab anyway: for cam-s1, T1's body does not hide that spot.
        state = feed(core, frames(1, {"cam-s1": [("head", "T2", 5.0 + OFFSET)]}), state)
        (kept,) = [x for x in state.locomotives if x.locomotive_id == "behind"]
        assert [(r.camera_id, r.kind) for r in kept.seen_through] == [("cam-s1", "head")]
    # Then cam-s1 keeps showing that spot empty: the locomotive has gone.
    later = feed(core, frames(4, {"cam-s1": []}, start_s=1.0), state)
    ids = [x.locomotive_id for x in later.locomotives]
    # Without the detection the model's "hidden" stands: not detecting it there is no evidence.
    assert ("behind" in ids) is not seen_through_first
    assert "front" in ids


@pytest.mark.parametrize(("gap_s", "kept"), [(20.0, ["new"]), (5.0, ["old", "new"])])
def test_a_plate_shown_on_two_locomotives_drops_the_stale_copy(
    core: FusionCore, gap_s: float, kept: list[str]
) -> None:
    # The same TEM2 shown at two places of T2 (a plate names one locomotive): the copy not
    # seen for `gap_s` after the other was is where it stood before it moved on unseen.
    old = _record("old", 12.5, 29.47, True, True, track="T2", last_seen_s=0.0)
    new = _record("new", 30.0, 46.97, True, True, track="T2", last_seen_s=gap_s)
    for loco in (old, new):
        loco.plates = {"TEM2-0001": 5.0}
    state = FusionState(locomotives=[old, new])
    after = feed(core, [position("cam-s1", 1, gap_s + 0.5)], state)
    assert [x.locomotive_id for x in after.locomotives] == kept


@pytest.mark.parametrize("plate_read", [True, False])
def test_a_cab_whose_plate_is_being_read_is_not_missed_where_it_is_not_detected(
    core: FusionCore, plate_read: bool
) -> None:
    # A TEM2 seen whole on T1; then cam-s1 shows its cab's spot and detects no end there (a
    # nearer body the sightline model does not know hides the cab's lower part) ...
    state = FusionState(locomotives=[_record("tem2", HEAD, TAIL, True, True, track="T1")])
    messages = frames(9, {"cam-s1": []}, start_s=0.5)
    if plate_read:
        # ... while its plate, hanging higher up at the cab, is read every 3 s (six frames
        # not detecting the cab would drop it; the readings alone do not outweigh them).
        messages += [
            identity("cam-s1", 100 + i, 0.7 + i * 3.0, "T1", HEAD + 1.0, "TEM2-0001")
            for i in range(3)
        ]
    messages.sort(key=lambda m: m.frame.captured_at)  # type: ignore[attr-defined]
    after = feed(core, messages, state)
    assert (["tem2"] if plate_read else []) == [x.locomotive_id for x in after.locomotives]


def test_a_standing_lone_end_by_a_gate_is_placed_inward_when_both_ways_are_open(
    core: FusionCore,
) -> None:
    # A tail at 5 m of T1, 5 m inside the gate; no camera reports the stretch beyond 12 m,
    # so its body may run out of the gate or into the depot. It does not move: a locomotive
    # standing in a gateway is the rarer case, so the body is placed inward.
    state = feed(core, frames(8, {"cam-s1": [("tail", "T1", 5.0 + OFFSET)]}))
    (loco,) = locos(core.render(state), "T1")
    assert loco.tail_m == pytest.approx(5.0, abs=0.1)
    assert loco.head_m > 20


def test_only_a_reading_at_the_hypothesised_cab_names_a_lone_ends_model(core: FusionCore) -> None:
    from state_builders import T0

    from services.state_estimator.fusion.births import Hypothesis, _read_models
    from services.state_estimator.fusion.state import LooseEnd, PlateVote

    tail = LooseEnd(
        end_id=1, track_id="T1", position_m=5.3, tail_votes=3.0, hits=6, confidence=0.9,
        first_seen=T0, last_seen=T0, cameras=["cam-s1"], from_plate_only=False,
    )  # fmt: skip
    # A TEM2 (16.97 m) running from the tail at 5 m towards larger positions: cab at 21.97.
    hyp = Hypothesis(1.0, "TEM2", 16.97, 5.0, 21.97, far_outside=False)

    def vote(at_m: float) -> PlateVote:
        return PlateVote(key=f"cam-s2:1:{at_m}", captured_at=T0, track_id="T1", position_m=at_m,
                         plate="TEM2-0001", plate_confidence=0.9)  # fmt: skip

    at_cab = FusionState(pending_votes=[vote(21.97 - 1.0)])
    mid_body = FusionState(pending_votes=[vote(12.0)])
    assert _read_models(core.config, at_cab, tail, hyp) == pytest.approx(0.9)
    assert _read_models(core.config, mid_body, tail, hyp) == 0.0


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_a_plate_is_at_the_cab_only_on_the_cabs_side(core: FusionCore, direction: float) -> None:
    from state_builders import T0

    from services.state_estimator.fusion.tracking import plate_at_cab

    # Cab at 20 m, body running `direction` from it: the plate hangs 1 m inside the cab.
    loco = _record("a", 20.0, 20.0 + direction * 16.97, True, True, track="T1")
    plate = 20.0 + direction * 1.0
    assert plate_at_cab(core.config, loco, plate, T0)
    assert plate_at_cab(core.config, loco, plate + direction * 1.5, T0)  # further inside
    assert not plate_at_cab(core.config, loco, plate - direction * 2.5, T0)  # beyond the cab
    # A cab only assumed (its tail seen, its head never) is no place to read a plate at.
    loco.head_seen_at = None
    assert not plate_at_cab(core.config, loco, plate, T0)


@pytest.mark.parametrize(("kind", "direction"), [("head", 1.0), ("head", -1.0), ("tail", -1.0)])
def test_a_lone_ends_model_is_named_only_at_its_hypothesised_cab(
    core: FusionCore, kind: str, direction: float
) -> None:
    from state_builders import T0

    from services.state_estimator.fusion.births import Hypothesis, _read_models
    from services.state_estimator.fusion.state import LooseEnd, PlateVote

    votes = {"head_votes": 3.0} if kind == "head" else {"tail_votes": 3.0}
    end_ = LooseEnd(
        end_id=1, track_id="T1", position_m=20.0, hits=6, confidence=0.9, first_seen=T0,
        last_seen=T0, cameras=["cam-s2"], from_plate_only=False, **votes,
    )  # fmt: skip
    far = 20.0 + direction * 16.97
    hyp = Hypothesis(direction, "TEM2", 16.97, 20.0, far, far_outside=False)
    cab, inward = (20.0, direction) if kind == "head" else (far, -direction)
    plate = cab + inward * 1.0

    def read_at(at_m: float) -> float:
        vote = PlateVote(key=f"c:1:{at_m}", captured_at=T0, track_id="T1", position_m=at_m,
                         plate="TEM2-0001", plate_confidence=0.9)  # fmt: skip
        return _read_models(core.config, FusionState(pending_votes=[vote]), end_, hyp)

    assert read_at(plate + inward * 1.5) == pytest.approx(0.9)
    assert read_at(plate - inward * 2.5) == 0.0


def test_a_camera_shows_a_hidden_spot_only_after_two_detections_past_the_same_occluders(
    core: FusionCore,
) -> None:
    from state_builders import T0

    from services.state_estimator.fusion.visibility import note_seen_through, shows_end

    cfg = core.config
    front = [("T1", -5.0, 36.0)]
    loco = _record("behind", 5.0, 21.97, True, True, track="T2")
    spot = 5.0 + OFFSET
    assert not shows_end(cfg, loco, "cam-s1", "head", spot, front)  # the model: hidden
    note_seen_through(cfg, loco, "cam-s1", "head", spot, front, T0)
    assert not shows_end(cfg, loco, "cam-s1", "head", spot, front)  # once may be a stray
    note_seen_through(cfg, loco, "cam-s1", "head", spot, front, T0)
    assert shows_end(cfg, loco, "cam-s1", "head", spot, front)
    # Not for another camera, another end, a spot 1 m away, or an occluder that moved.
    assert not shows_end(cfg, loco, "cam-s2", "head", spot, front)
    assert not shows_end(cfg, loco, "cam-s1", "tail", spot, front)
    assert not shows_end(cfg, loco, "cam-s1", "head", spot + 1.0, front)
    assert not shows_end(cfg, loco, "cam-s1", "head", spot, [("T1", -5.0, 40.0)])


def test_two_locomotives_seen_together_with_one_plate_are_both_kept(core: FusionCore) -> None:
    # A misread gives a second locomotive the plate of one seen beside it all along: a misread,
    # not a stale copy, however long ago the first was last seen.
    # Both seen from T0; the parked one last 10 s after T0, the other 20 s later still.
    parked = _record("parked", 12.5, 29.47, True, True, track="T2", last_seen_s=10.0)
    other = _record("other", 30.0, 46.97, True, True, track="T2", last_seen_s=30.0)
    for loco in (parked, other):
        loco.plates = {"TEM2-0001": 5.0}
    after = feed(core, [position("cam-s1", 1, 30.5)], FusionState(locomotives=[parked, other]))
    assert [x.locomotive_id for x in after.locomotives] == ["parked", "other"]


@pytest.mark.parametrize("livery_readings", [0, 20])
def test_a_plate_whose_model_most_readings_contradict_is_not_shown(
    core: FusionCore, livery_readings: int
) -> None:
    # Field failure (test-busy 9505, real detector): a TE33A stood cab to cab with a TEM2; three
    # readings of the TEM2's plate went to the TE33A, whose own plate was never legible, and
    # the state showed TEM2-1902 on both although 224 livery readings named the TE33A.
    loco = _record("te33a", HEAD, HEAD + 21.7, True, True, track="T1")
    loco.plates = {"TEM2-1902": 3.0}
    loco.models = {"TEM2": 3.0, "TE33A": float(livery_readings)}
    (shown,) = locos(core.render(FusionState(locomotives=[loco])), "T1")
    if livery_readings:
        assert (shown.plate, shown.model) == (None, "TE33A")
    else:  # nothing contradicts the plate
        assert (shown.plate, shown.model) == ("TEM2-1902", "TEM2")


@pytest.mark.parametrize(("evidence", "holder"), [((9.0, 3.0), "a"), ((3.0, 3.0), None)])
def test_a_plate_is_shown_on_one_locomotive_at_most(
    core: FusionCore, evidence: tuple[float, float], holder: str | None
) -> None:
    # A plate names one locomotive: where two tracked bodies both carry it (a misread, or
    # readings of a cab-to-cab neighbour), the one with more evidence shows it; a tie shows
    # neither (unsure is "unknown", never a wrong plate).
    a = _record("a", 12.5, 29.47, True, True, track="T2")
    b = _record("b", 30.0, 46.97, True, True, track="T2")
    for loco, weight in zip((a, b), evidence, strict=True):
        loco.plates = {"TEM2-0001": weight}
        loco.models = {"TEM2": weight}
    shown = {
        lo.locomotive_id: lo for lo in locos(core.render(FusionState(locomotives=[a, b])), "T2")
    }
    assert [i for i, lo in shown.items() if lo.plate == "TEM2-0001"] == ([holder] if holder else [])
    assert {lo.model for lo in shown.values()} == {"TEM2"}  # the model stays on both
