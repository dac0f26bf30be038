"""The dashboard's pure core: geometry to draw, dev-vs-prod comparison, accuracy."""

from __future__ import annotations

from datetime import timedelta

import pytest
from dashboard_builders import T0, facility, frame, loco, positions, state, true_loco, truth

from schemas.facility import FacilityConfig, Track
from services.dashboard.core import (
    DashboardState,
    accuracy,
    compare_flows,
    facility_layout,
    state_view,
    thin_states,
    track_path,
)
from services.evaluation.compare import compare_states

BENT = Track(id="B", polyline=[(0.0, 0.0), (10.0, 0.0), (10.0, 10.0)])


@pytest.mark.parametrize(
    ("from_m", "to_m", "expected"),
    [
        (2.0, 6.0, [(2.0, 0.0), (6.0, 0.0)]),
        (6.0, 14.0, [(6.0, 0.0), (10.0, 0.0), (10.0, 4.0)]),
        (14.0, 6.0, [(10.0, 4.0), (10.0, 0.0), (6.0, 0.0)]),
    ],
)
def test_track_path_follows_bends_in_the_given_direction(
    from_m: float, to_m: float, expected: list[tuple[float, float]]
) -> None:
    assert track_path(BENT, from_m, to_m) == expected


def test_layout_covers_tracks_and_cameras() -> None:
    layout = facility_layout(facility())
    b = layout["bounds"]
    assert b["x_min"] < 0
    assert b["x_max"] > 48
    # Cameras hang on the walls at y=-2 and y=20: both inside the drawing.
    assert b["y_min"] < -2
    assert b["y_max"] > 20
    assert [t["id"] for t in layout["tracks"]] == ["T1", "T2", "T3"]
    assert layout["flows"] == ["prod", "dev"]
    assert {c["id"] for c in layout["cameras"]} >= {"cam-s1", "cam-n4"}
    assert all(c["calibrated"] for c in layout["cameras"])


def test_layout_marks_a_camera_without_calibration(uncalibrated_facility: FacilityConfig) -> None:
    cams = {c["id"]: c for c in facility_layout(uncalibrated_facility)["cameras"]}
    assert cams["cam-s1"]["calibrated"] is False
    assert cams["cam-s2"]["calibrated"] is True


def test_state_view_draws_locomotives_to_scale_on_their_track() -> None:
    view = state_view(facility(), state("prod", T2=[loco("L1", head=30.0, tail=13.03)]))
    (lo,) = view["locomotives"]
    assert lo["track_id"] == "T2"
    assert lo["length_m"] == pytest.approx(16.97)
    # Tail first, head last, on the T2 centre line y=9.
    assert lo["path"] == [[13.03, 9.0], [30.0, 9.0]]
    assert view["cameras"] == {"cam-s1": "ok", "cam-n4": "stale"}


def test_state_view_reports_tracks_the_config_does_not_know() -> None:
    view = state_view(facility(), state("prod", T9=[loco("L1", 10, 0)]))
    assert view["locomotives"] == []
    assert view["unknown_tracks"] == ["T9"]


def test_compare_flows_highlights_missing_and_misidentified_locomotives() -> None:
    prod = state(
        "prod",
        T1=[loco("p1", 20, 3), loco("p2", 45, 28)],
        T3=[loco("p3", 40, 23, plate="TEM2-0003")],
    )
    dev = state(
        "dev",
        T1=[loco("d1", 20.5, 3.4)],  # same as p1 within tolerance; p2 is missing in dev
        T3=[loco("d3", 40, 23, plate="TEM2-9999")],  # same place, other plate
        T2=[loco("d4", 10, 0)],  # only dev sees this one
    )
    cmp = compare_flows(prod, dev)
    assert cmp["matched"] == 2
    assert cmp["only"] == {"prod": ["p2"], "dev": ["d4"]}
    assert cmp["differs"] == {"prod": ["p2", "p3"], "dev": ["d3", "d4"]}
    assert cmp["agreement"] == pytest.approx(1 / 4)


def test_compare_flows_of_identical_states_agrees_fully() -> None:
    s = {"T1": [loco("a", 20, 3)]}
    assert compare_flows(state("prod", **s), state("dev", **s))["agreement"] == 1.0


def test_accuracy_against_ground_truth() -> None:
    gt = truth(
        true_loco("t1", "T1", 20, 3.03, "TEM2-0001", "TEM2"),
        true_loco("t2", "T2", 40, 21.85, "2TE116-0002", "2TE116"),
    )
    st = state(
        "prod",
        T1=[loco("a", 21, 4.03)],  # 1 m off at both ends, right plate
        T3=[loco("b", 10, 0)],  # nothing there in truth
    )
    acc = accuracy(gt, st)
    assert acc["true_count"] == 2
    assert acc["detected"] == 0.5
    assert acc["position_error_m"] == pytest.approx(1.0)
    assert acc["plates"] == 1.0
    assert acc["false"] == 1


def test_dashboard_state_ignores_older_messages_and_pushes_events() -> None:
    ds = DashboardState(facility())
    events = ds.apply_state(state("prod", at_s=10, T1=[loco("a", 20, 3)]))
    assert [e["type"] for e in events] == ["state"]
    assert ds.apply_state(state("prod", at_s=5)) == []
    events = ds.apply_state(state("dev", at_s=11, T1=[loco("a", 20, 3)]))
    assert [e["type"] for e in events] == ["state", "compare"]
    events = ds.apply_truth(truth(true_loco("t", "T1", 20, 3, "TEM2-0001", "TEM2")))
    assert [e["type"] for e in events] == ["compare", "accuracy"]
    assert ds.accuracy()["dev"]["detected"] == 1.0
    assert ds.apply_frame(frame("cam-s1", 7, at_s=3))[0]["data"]["url"] == "frames/cam-s1.jpg?seq=7"
    assert ds.apply_frame(frame("cam-s1", 6, at_s=2)) == []
    assert ds.apply_positions(positions("cam-s1", 7))[0]["data"]["boxes"][0]["box"] == [
        100.0,
        200.0,
        300.0,
        400.0,
    ]
    snap = ds.snapshot()
    assert set(snap["states"]) == {"prod", "dev"}
    assert snap["frames"]["cam-s1"]["seq"] == 7
    assert "cam-s1/prod" in snap["detections"]


def test_state_of_another_facility_is_ignored() -> None:
    ds = DashboardState(facility())
    other = state("prod").model_copy(update={"facility_id": "elsewhere"})
    assert ds.apply_state(other) == []


def test_dashboard_and_eval_pair_the_same_locomotives() -> None:
    """The dashboard's panels and `eval pipeline`/`compare` use one matcher (issue 12, #3).

    dev's T1 locomotive has one end 3.5 m off (a guessed end) and its centre 1.75 m off: the
    dashboard's old rule (both ends within 3 m) called it missing while `compare` matched it.
    """
    prod = state("prod", T1=[loco("p1", 20, 3)], T2=[loco("p2", 40, 23)])
    dev = state("dev", T1=[loco("d1", 23.5, 3)], T2=[loco("d2", 50, 33)])
    by_eval = len(compare_states(prod, dev).end_errors_m) // 2
    by_dashboard = compare_flows(prod, dev)["matched"]
    assert (by_dashboard, by_eval) == (1, 1)
    gt = truth(true_loco("t1", "T1", 20, 3, "TEM2-0001", "TEM2"))
    assert accuracy(gt, dev)["detected"] == 1.0


def test_camera_views_hide_passwords_and_tell_fps_and_staleness() -> None:
    cfg = facility()
    cams = [
        cfg.cameras[0].model_copy(update={"source": "rtsp://op:hunter2@192.0.2.7:554/s1"}),
        *cfg.cameras[1:],
    ]
    st = DashboardState(cfg.model_copy(update={"cameras": cams}))
    first = cams[0].id
    for s in range(5):  # 2 frames/s for 2 s; its capture reopened the stream once
        st.apply_frame(frame(first, s, at_s=s * 0.5).model_copy(update={"reconnects": 1}))
    st.apply_state(state("prod", T1=[loco("a", 20, 3)]))
    views = {v.camera.id: v for v in st.camera_views(T0 + timedelta(seconds=2))}
    v = views[first]
    assert v.camera.source == "rtsp://***@192.0.2.7:554/s1"
    assert v.fps == 2.0
    assert not v.stale
    assert v.last_frame is not None
    assert v.last_frame.seq == 4
    assert v.reconnects == 1
    assert views["cam-s2"].reconnects is None  # no frame yet: not reported
    assert views["cam-s1"].health["prod"].status == "ok"
    # Silent for longer than 3 frame periods and 10 s: stale; never heard: stale.
    later = {v.camera.id: v for v in st.camera_views(T0 + timedelta(seconds=13))}
    assert later[first].stale
    assert later[first].fps == round(4 / 13, 2)
    assert st.camera_views(T0 + timedelta(seconds=70))[0].fps is None
    assert all(v.stale for c, v in later.items() if c != first and cfg.camera(c).enabled)


def test_flow_views_give_the_age_of_each_flows_state() -> None:
    st = DashboardState(facility())
    st.apply_state(state("prod", at_s=1, T1=[loco("a", 20, 3)], T2=[loco("b", 40, 22)]))
    views = {v.flow: v for v in st.flow_views(T0 + timedelta(seconds=11))}
    assert views["prod"].age_s == 10.0
    assert views["prod"].locomotives == 2
    assert views["dev"].as_of is None
    assert views["dev"].locomotives == 0


def test_thin_states_keeps_one_state_per_stretch_oldest_first() -> None:
    states = [state("prod", at_s=t) for t in (2.5, 0.0, 0.4, 1.0, 1.2, 3.0)]
    kept = [(s.as_of - T0).total_seconds() for s in thin_states(states, 1.0)]
    assert kept == [0.0, 1.0, 2.5]
    assert len(thin_states(states, 0.1)) == 6
