"""Fusion core: plain estimates in, facility state out (no broker)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from state_builders import OFFSET, end, identity, position

from schemas.base import Message
from schemas.facility import load_facility
from schemas.facility_state import FacilityState, LocomotiveState
from services.state_estimator.fusion import FusionConfig, FusionCore, FusionState

FACILITY = Path(__file__).resolve().parents[2] / "facility.yaml"

# A TEM2 (16.97 m) on T1 with its cab at 2.0 m: cam-s1 sees x 0-12, cam-s2 x 12-24 of T1.
HEAD, TAIL = 2.0, 18.97


@pytest.fixture(scope="module")
def core() -> FusionCore:
    cfg = load_facility(FACILITY)
    return FusionCore(FusionConfig.from_facility(cfg, "prod", cfg.flow("prod").state_estimator))


def feed(
    core: FusionCore, messages: list[Message], state: FusionState | None = None
) -> FusionState:
    state = state or FusionState()
    for msg in messages:
        if msg.TOPIC.startswith("positions"):
            state, _ = core.apply_position(state, msg)  # type: ignore[arg-type]
        else:
            state, _ = core.apply_identity(state, msg)  # type: ignore[arg-type]
    return state


def locos(state: FacilityState, track: str) -> list[LocomotiveState]:
    return next(t.locomotives for t in state.tracks if t.track_id == track)


def tem2_frames(seq: int, at_s: float) -> list[Message]:
    """cam-s1 sees the cab end, cam-s2 the coupler end, of the TEM2 on T1."""
    return [
        position("cam-s1", seq, at_s, end("head", "T1", HEAD + OFFSET)),
        position("cam-s2", seq, at_s + 0.05, end("tail", "T1", TAIL - OFFSET)),
    ]


def test_head_and_tail_from_different_cameras_make_one_locomotive(core: FusionCore) -> None:
    out = core.render(feed(core, tem2_frames(0, 0.0)))
    (loco,) = locos(out, "T1")
    # The inward label offset is corrected once the orientation is known.
    assert loco.head_m == pytest.approx(HEAD, abs=0.01)
    assert loco.tail_m == pytest.approx(TAIL, abs=0.01)
    assert loco.cameras == ["cam-s1", "cam-s2"]
    assert loco.stale is False
    assert locos(out, "T2") == []
    assert locos(out, "T3") == []


def test_head_alone_is_not_a_locomotive(core: FusionCore) -> None:
    state = feed(core, [position("cam-s1", 0, 0.0, end("head", "T1", HEAD + OFFSET))])
    assert core.render(state).locomotive_count == 0


def test_ends_too_far_apart_for_any_model_do_not_pair(core: FusionCore) -> None:
    state = feed(
        core,
        [
            position("cam-s1", 0, 0.0, end("head", "T1", 2.0)),
            position("cam-s3", 0, 0.0, end("tail", "T1", 30.0)),
        ],
    )
    assert core.render(state).locomotive_count == 0


def test_two_locomotives_coupled_nose_to_tail(core: FusionCore) -> None:
    # TEM2 2.0..18.97, then a 2TE116 (18.15 m) coupled to it: cab at 19.07, tail at 37.22.
    msgs: list[Message] = [
        position("cam-s1", 0, 0.0, end("head", "T1", HEAD + OFFSET)),
        position(
            "cam-s2",
            0,
            0.0,
            end("tail", "T1", TAIL - OFFSET),
            end("head", "T1", 19.07 + OFFSET),
        ),
        position("cam-s4", 0, 0.0, end("tail", "T1", 37.22 - OFFSET)),
        identity("cam-s1", 0, 0.0, "T1", 5.0, "TEM2-0001"),
        identity("cam-s2", 0, 0.0, "T1", 22.0, "2TE116-0042"),
    ]
    a, b = locos(core.render(feed(core, msgs)), "T1")
    assert (a.head_m, a.tail_m) == pytest.approx((HEAD, TAIL), abs=0.01)
    assert (b.head_m, b.tail_m) == pytest.approx((19.07, 37.22), abs=0.01)
    assert (a.plate, a.model) == ("TEM2-0001", "TEM2")
    assert (b.plate, b.model) == ("2TE116-0042", "2TE116")
    assert a.locomotive_id != b.locomotive_id


def test_two_locomotives_coupled_cab_to_cab_seen_by_one_camera(core: FusionCore) -> None:
    # A TEM2 facing the gate (tail 2.0, cab 18.97) and one facing away (cab 19.07, tail 36.04):
    # cam-s2 sees both cabs 0.7 m apart, which must stay two ends.
    msgs: list[Message] = [
        position("cam-s1", 0, 0.0, end("tail", "T1", 2.0 + OFFSET)),
        position(
            "cam-s2", 0, 0.0, end("head", "T1", 18.97 - OFFSET), end("head", "T1", 19.07 + OFFSET)
        ),
        position("cam-s3", 0, 0.0, end("tail", "T1", 36.04 - OFFSET)),
    ]
    a, b = locos(core.render(feed(core, msgs)), "T1")
    assert (a.head_m, a.tail_m) == pytest.approx((18.97, 2.0), abs=0.01)
    assert (b.head_m, b.tail_m) == pytest.approx((19.07, 36.04), abs=0.01)


def test_overlapping_cameras_seeing_one_end_count_it_once(core: FusionCore) -> None:
    # On T2 the south and north cameras overlap; both see the same cab end 0.2 m apart.
    msgs: list[Message] = [
        position("cam-s1", 0, 0.0, end("head", "T2", 3.3)),
        position("cam-n1", 0, 0.0, end("head", "T2", 3.5)),
        position("cam-s2", 0, 0.0, end("tail", "T2", 3.4 + 17.22 - 2 * OFFSET)),
    ]
    (loco,) = locos(core.render(feed(core, msgs)), "T2")
    assert loco.cameras == ["cam-n1", "cam-s1", "cam-s2"]
    assert loco.tail_m - loco.head_m == pytest.approx(17.22, abs=0.15)


def all_cameras(seq: int, at_s: float, skip: tuple[str, ...] = ()) -> list[Message]:
    """Every camera's frame: the TEM2 on T1, a ChME3 (17.22 m) on T3 at 20.0..37.22."""
    views = {
        "cam-s1": [end("head", "T1", HEAD + OFFSET)],
        "cam-s2": [end("tail", "T1", TAIL - OFFSET)],
        "cam-s3": [],
        "cam-s4": [],
        "cam-n1": [],
        "cam-n2": [end("head", "T3", 20.0 + OFFSET)],
        "cam-n3": [],
        "cam-n4": [end("tail", "T3", 37.22 - OFFSET)],
    }
    return [position(c, seq, at_s, *obs) for c, obs in views.items() if c not in skip]


def test_silent_camera_keeps_its_last_view_marked_stale(core: FusionCore) -> None:
    state = FusionState()
    for seq in range(20):
        state = feed(core, all_cameras(seq, seq * 0.5), state)
    before = locos(core.render(state), "T3")[0]
    # cam-n2 and cam-n4, the only cameras on that ChME3, go silent for a minute.
    for seq in range(20, 140):
        state = feed(core, all_cameras(seq, seq * 0.5, skip=("cam-n2", "cam-n4")), state)
    out = core.render(state)
    (after,) = locos(out, "T3")
    assert after.locomotive_id == before.locomotive_id
    assert (after.head_m, after.tail_m) == (before.head_m, before.tail_m)
    assert after.stale is True
    assert after.confidence < before.confidence
    assert locos(out, "T1")[0].stale is False
    health = {c.camera_id: c.status for c in out.cameras}
    assert health["cam-n2"] == health["cam-n4"] == "stale"
    assert health["cam-s1"] == "ok"


def test_one_silent_end_lowers_confidence_but_keeps_locomotive_live(core: FusionCore) -> None:
    state = FusionState()
    for seq in range(100):
        state = feed(core, all_cameras(seq, seq * 0.5, skip=("cam-n4",) if seq > 10 else ()), state)
    (loco,) = locos(core.render(state), "T3")
    assert loco.stale is False
    # Both ends still measured (the silent camera's tail is kept, not extrapolated), with the
    # confidence lowered for the end that rests on a silent camera.
    assert (loco.head_m, loco.tail_m) == pytest.approx((20.0, 37.22), abs=0.01)
    assert loco.cameras == ["cam-n2", "cam-n4"]
    assert loco.confidence == pytest.approx(0.9 * 0.75)


def test_live_camera_overrides_silent_cameras_view_of_a_departed_locomotive(
    core: FusionCore,
) -> None:
    # A ChME3 on T2 at 3.0..20.22 is seen from both walls; the north cameras go silent, then
    # the locomotive leaves. The south cameras see the same stretch: no ghost may remain.
    def frames(seq: int, at_s: float, present: bool, north: bool) -> list[Message]:
        head = [end("head", "T2", 3.3)] if present else []
        tail = [end("tail", "T2", 19.92)] if present else []
        out: list[Message] = [
            position("cam-s1", seq, at_s, *head),
            position("cam-s2", seq, at_s, *tail),
        ]
        if north:
            out += [position("cam-n1", seq, at_s, *head), position("cam-n2", seq, at_s, *tail)]
        return out

    state = FusionState()
    for seq in range(10):
        state = feed(core, frames(seq, seq * 0.5, present=True, north=True), state)
    assert len(locos(core.render(state), "T2")) == 1
    for seq in range(10, 40):
        state = feed(core, frames(seq, seq * 0.5, present=False, north=False), state)
    assert locos(core.render(state), "T2") == []


def test_out_of_order_delivery_gives_the_same_state(core: FusionCore) -> None:
    msgs: list[Message] = []
    for seq in range(12):
        msgs += all_cameras(seq, seq * 0.5)
    in_order = core.render(feed(core, msgs))
    shuffled = list(msgs)
    random.Random(7).shuffle(shuffled)
    out_of_order = core.render(feed(core, shuffled))
    for track in ("T1", "T2", "T3"):
        a = [(x.head_m, x.tail_m) for x in locos(in_order, track)]
        b = [(x.head_m, x.tail_m) for x in locos(out_of_order, track)]
        assert a == b
    assert in_order.as_of == out_of_order.as_of


def test_late_frame_older_than_the_cameras_view_is_ignored(core: FusionCore) -> None:
    state = feed(core, tem2_frames(5, 10.0))
    # A late frame from cam-s1, captured before its current view, shows nothing at all.
    late, accepted = core.apply_position(state, position("cam-s1", 3, 8.0))
    assert accepted is False
    assert late == state
    assert len(locos(core.render(late), "T1")) == 1


def test_duplicate_delivery_is_not_double_counted(core: FusionCore) -> None:
    msgs = [*tem2_frames(0, 0.0), identity("cam-s1", 0, 0.0, "T1", 5.0, "TEM2-0001")]
    once = feed(core, msgs)
    twice = feed(core, msgs, once)
    assert twice == once
    assert core.apply_position(once, msgs[0])[1] is False  # type: ignore[arg-type]
    assert core.apply_identity(once, msgs[2])[1] is False  # type: ignore[arg-type]
    (tracked,) = twice.locomotives
    assert len(tracked.votes) == 1
    # The same vote again, after later frames, still counts once.
    later = feed(core, [*tem2_frames(1, 1.0), msgs[2]], once)
    assert len(later.locomotives[0].votes) == 1


def test_plate_read_before_the_locomotive_is_placed_waits_for_it(core: FusionCore) -> None:
    state = feed(core, [identity("cam-s1", 0, 0.0, "T1", 5.0, "TEM2-0077")])
    assert len(state.pending_votes) == 1
    state = feed(core, tem2_frames(1, 0.5), state)
    (loco,) = locos(core.render(state), "T1")
    assert loco.plate == "TEM2-0077"
    assert loco.model == "TEM2"


def test_standstill_for_hours_keeps_one_locomotive_and_its_id(core: FusionCore) -> None:
    state = FusionState()
    ids = set()
    for seq in range(3 * 60):  # one frame a minute per camera, three hours of event time
        state = feed(core, tem2_frames(seq, seq * 60.0), state)
        ids |= {loco.locomotive_id for loco in state.locomotives}
    out = core.render(state)
    (loco,) = locos(out, "T1")
    assert ids == {loco.locomotive_id}
    assert (loco.head_m, loco.tail_m) == pytest.approx((HEAD, TAIL), abs=0.01)
    assert loco.stale is False


def test_one_missed_detection_keeps_the_id_and_a_departure_removes_it(core: FusionCore) -> None:
    state = feed(core, tem2_frames(0, 0.0))
    (first,) = state.locomotives
    # The coupler end is missed in one frame: the known locomotive follows its cab end.
    state = feed(core, [position("cam-s2", 1, 0.5)], state)
    (held,) = locos(core.render(state), "T1")
    assert held.locomotive_id == first.locomotive_id
    state = feed(core, tem2_frames(2, 1.0), state)
    assert state.locomotives[0].locomotive_id == first.locomotive_id
    # It leaves: both cameras show an empty track from now on.
    for seq in range(3, 30):
        state = feed(
            core, [position("cam-s1", seq, seq * 0.5), position("cam-s2", seq, seq * 0.5)], state
        )
    assert core.render(state).locomotive_count == 0


def test_moving_locomotive_keeps_its_id(core: FusionCore) -> None:
    state = FusionState()
    ids = set()
    for seq in range(40):  # 0.5 m/s towards the gate... and beyond cam-s2 into cam-s3
        shift = seq * 0.25
        head, tail = HEAD + shift + OFFSET, TAIL + shift - OFFSET
        msgs = []
        for cam, lo, hi in (("cam-s1", 0, 12), ("cam-s2", 12, 24), ("cam-s3", 24, 36)):
            obs = [end(k, "T1", p) for k, p in (("head", head), ("tail", tail)) if lo <= p < hi]
            msgs.append(position(cam, seq, seq * 0.5, *obs))
        state = feed(core, msgs, state)
        ids |= {loco.locomotive_id for loco in state.locomotives}
    (loco,) = locos(core.render(state), "T1")
    assert ids == {loco.locomotive_id}
    assert loco.head_m == pytest.approx(HEAD + 39 * 0.25, abs=0.01)


def test_render_lists_every_track_and_camera(core: FusionCore) -> None:
    out = core.render(FusionState())
    assert [t.track_id for t in out.tracks] == ["T1", "T2", "T3"]
    assert len(out.cameras) == 8
    assert {c.status for c in out.cameras} == {"stale"}


def test_state_round_trips_through_json(core: FusionCore) -> None:
    state = feed(core, [*tem2_frames(0, 0.0), identity("cam-s1", 0, 0.0, "T1", 5.0, "TEM2-1")])
    restored = FusionState.model_validate_json(state.model_dump_json())
    assert restored == state
    assert core.render(restored) == core.render(state)


def test_locomotive_partly_outside_the_gate_is_placed_from_its_visible_end(
    core: FusionCore,
) -> None:
    # A TE33A (21.7 m) arriving on T1: cab at 8.0 inside, coupler end at -13.7 outside the
    # depot. Every camera on T1 reports. A body running inwards would put the coupler end at
    # 24.2-29.4 m: cam-s3 shows nothing there, except where its view meets cam-s2's (a TEM2
    # or ChME3 could hide its end there). Every model fits running out of the gate: likelier.
    def frames(seq: int, at_s: float) -> list[Message]:
        return [
            position("cam-s1", seq, at_s, end("head", "T1", 8.0 - OFFSET)),
            *(position(c, seq, at_s) for c in ("cam-s2", "cam-s3", "cam-s4")),
        ]

    state = feed(core, frames(0, 0.0))
    (loco,) = locos(core.render(state), "T1")
    assert loco.head_m == pytest.approx(8.0, abs=0.01)
    assert loco.tail_m < 0  # outside; the shortest model that sticks out until a plate says
    # The plate names the model: the outside end moves to that model's length.
    state = feed(
        core, [identity("cam-s1", 1, 0.5, "T1", 7.0, "TE33A-0001"), *frames(1, 0.5)], state
    )
    (loco,) = locos(core.render(state), "T1")
    assert (loco.head_m, loco.tail_m) == pytest.approx((8.0, 8.0 - 21.7), abs=0.01)
    assert loco.model == "TE33A"


def test_locomotive_deep_inside_the_gate_is_placed_with_the_shortest_model(
    core: FusionCore,
) -> None:
    # Cab at 3.0 on T1, every camera reports: a body running inwards would put the coupler
    # end at 19.7-24.4 m, inside cam-s2's view, which shows nothing there. It runs out.
    state = feed(
        core,
        [
            position("cam-s1", 0, 0.0, end("head", "T1", 3.0 - OFFSET)),
            *(position(c, 0, 0.0) for c in ("cam-s2", "cam-s3", "cam-s4")),
        ],
    )
    (loco,) = locos(core.render(state), "T1")
    assert loco.head_m == pytest.approx(3.0, abs=0.01)
    assert loco.tail_m == pytest.approx(3.0 - 16.97, abs=0.01)  # shortest model: TEM2


def test_end_whose_partner_stands_where_two_views_meet_is_placed(core: FusionCore) -> None:
    # Two locomotives coupled on T1: a TEM2 (1.8-18.77) and a ChME3 whose cab is at 18.95 and
    # whose coupler end is at 36.17, right where cam-s3's and cam-s4's views meet, so no
    # camera detects it. The ChME3's cab cannot belong to a body running towards the gate
    # (the TEM2's ends are in the way): its coupler end stands unseen in the seam.
    def frames(seq: int, at_s: float) -> list[Message]:
        return [
            position("cam-s1", seq, at_s, end("head", "T1", 1.8 + OFFSET)),
            position(
                "cam-s2",
                seq,
                at_s,
                end("tail", "T1", 18.77 - OFFSET),
                end("head", "T1", 18.95 + OFFSET),
            ),
            *(position(c, seq, at_s) for c in ("cam-s3", "cam-s4")),
        ]

    state = feed(core, frames(0, 0.0))
    first, second = locos(core.render(state), "T1")
    assert (first.head_m, first.tail_m) == pytest.approx((1.8, 18.77), abs=0.01)
    assert second.head_m == pytest.approx(18.95, abs=0.01)
    assert second.tail_m == pytest.approx(18.95 + 16.97, abs=0.01)  # shortest model fits
    # Its plate says ChME3 (17.22 m): the unseen end moves to that length.
    state = feed(
        core, [identity("cam-s2", 1, 0.5, "T1", 20.0, "ChME3-5752"), *frames(1, 0.5)], state
    )
    _, second = locos(core.render(state), "T1")
    assert second.tail_m == pytest.approx(18.95 + 17.22, abs=0.01)
    assert second.plate == "ChME3-5752"


def test_lone_end_is_not_placed_while_its_partner_could_be_unseen(core: FusionCore) -> None:
    # Only cam-s1 has reported: the body might run along the track into cam-s2's view.
    state = feed(core, [position("cam-s1", 0, 0.0, end("head", "T1", 8.0 - OFFSET))])
    assert core.render(state).locomotive_count == 0


def test_two_locomotives_coupled_tail_to_tail_seen_from_both_walls(core: FusionCore) -> None:
    # On T2 (seen from both walls): a ChME3 with its cab at -6.6 outside the gate and its
    # tail at 10.62, coupled tail to tail with a TE33A whose tail is at 11.3, cab at 33.0.
    # Each camera places the two tails 0.7 m apart with its own error; a camera that shows
    # both proves there are two.
    ta, tb, hb = 10.62 - OFFSET, 11.3 + OFFSET, 33.0 - OFFSET
    msgs: list[Message] = []
    for seq in range(3):
        at = seq * 0.5
        msgs += [
            position("cam-s1", seq, at, end("tail", "T2", ta + 0.1), end("tail", "T2", tb - 0.1)),
            position("cam-n1", seq, at, end("tail", "T2", ta - 0.1), end("tail", "T2", tb + 0.1)),
            position("cam-s2", seq, at, end("tail", "T2", tb + 0.2)),
            position("cam-n2", seq, at, end("tail", "T2", tb - 0.2)),
            position("cam-s3", seq, at, end("head", "T2", hb)),
            position("cam-n3", seq, at, end("head", "T2", hb)),
            position("cam-s4", seq, at),
            position("cam-n4", seq, at),
        ]
    out = core.render(feed(core, msgs))
    found = [(x.head_m, x.tail_m) for x in locos(out, "T2")]
    assert len(found) == 2
    assert found[1] == pytest.approx((33.0, 11.3), abs=0.2)
    assert found[0][1] == pytest.approx(10.62, abs=0.2)
    assert found[0][0] < 0


def test_a_plate_splits_ends_of_two_locomotives_that_fit_one_length(core: FusionCore) -> None:
    # On T2: a TE33A with its cab at 18.96 runs out of the gate (coupler end at -2.74), and
    # another locomotive's coupler end stands at 37.0 with its body running out past 48 m.
    # The two visible ends, 18.3 m apart, fit a 2TE116 (18.15 m): alone they look like one.
    # The TE33A's plate, read beside its cab, names a model that does not fit: two.
    cameras = ("cam-s1", "cam-s2", "cam-s3", "cam-s4", "cam-n1", "cam-n2", "cam-n3", "cam-n4")

    def frames(seq: int, at_s: float) -> list[Message]:
        seen = {
            "cam-s2": [end("head", "T2", 18.96 - OFFSET)],
            "cam-s4": [end("tail", "T2", 37.0 + OFFSET)],
        }
        return [position(c, seq, at_s, *seen.get(c, [])) for c in cameras]

    state = feed(core, frames(0, 0.0))
    assert len(locos(core.render(state), "T2")) == 1  # without the plate: one 2TE116
    for seq in range(1, 4):
        state = feed(
            core,
            [
                identity("cam-s2", seq, seq * 0.5, "T2", 16.74, "TE33A-5405"),
                *frames(seq, seq * 0.5),
            ],
            state,
        )
    first, second = locos(core.render(state), "T2")
    assert (first.head_m, first.tail_m) == pytest.approx((18.96, 18.96 - 21.7), abs=0.05)
    assert first.plate == "TE33A-5405"
    assert second.tail_m == pytest.approx(37.0, abs=0.05)
    assert second.head_m > 48.0  # its cab stands outside the depot


def test_locomotive_hidden_behind_another_on_a_nearer_track_is_kept(core: FusionCore) -> None:
    # A TEM2 on T2 (cab 2.0, coupler end 18.97), seen by cam-s1 and cam-s2. Then a TE33A rolls
    # onto T1 (0.5-22.2) in front of it as cam-s1/s2 see it, and another onto T3 (0.5-22.2)
    # as cam-n1/n2 see it: the T2 ends disappear from every view. It was not seen to leave.
    near = {
        "cam-s1": [end("head", "T1", 0.5 + OFFSET)],
        "cam-s2": [end("tail", "T1", 22.2 - OFFSET)],
        "cam-n1": [end("head", "T3", 0.5 + OFFSET)],
        "cam-n2": [end("tail", "T3", 22.2 - OFFSET)],
    }
    cameras = ("cam-s1", "cam-s2", "cam-s3", "cam-s4", "cam-n1", "cam-n2", "cam-n3", "cam-n4")

    def frames(seq: int, at_s: float, hidden: bool) -> list[Message]:
        out = []
        for c in cameras:
            obs = list(near.get(c, [])) if hidden else []
            if not hidden and c in ("cam-s1", "cam-n1"):
                obs.append(end("head", "T2", 2.0 + OFFSET))
            if not hidden and c in ("cam-s2", "cam-n2"):
                obs.append(end("tail", "T2", 18.97 - OFFSET))
            out.append(position(c, seq, at_s, *obs))
        return out

    state = feed(core, frames(0, 0.0, hidden=False))
    assert len(locos(core.render(state), "T2")) == 1
    for seq in range(1, 40):  # 20 s, far beyond hold_s
        state = feed(core, frames(seq, seq * 0.5, hidden=True), state)
    rendered = core.render(state)
    assert len(locos(rendered, "T1")) == 1
    assert len(locos(rendered, "T3")) == 1
    (kept,) = locos(rendered, "T2")
    assert (kept.head_m, kept.tail_m) == pytest.approx((2.0, 18.97), abs=0.05)
    assert kept.confidence <= 0.5
