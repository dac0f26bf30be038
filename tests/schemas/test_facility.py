"""The facility config: the shipped depot is sound, and every bad edit gets one clear line."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from schemas.facility import (
    Camera,
    ConfigError,
    FacilityConfig,
    load_facility,
    parse_facility,
)
from schemas.geometry import point_at_position

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "facility.yaml"


@pytest.fixture(scope="module")
def shipped() -> FacilityConfig:
    return load_facility(SHIPPED)


@pytest.fixture(scope="module")
def shipped_data() -> dict[str, Any]:
    data = yaml.safe_load(SHIPPED.read_text())
    assert isinstance(data, dict)
    return data


def visible_stretch(cfg: FacilityConfig, cam: Camera, track_id: str) -> tuple[float, float] | None:
    """First and last position (m) along the track whose floor point lands inside the image.

    Uses the calibration (what a real camera has), sampling every 5 cm. A floor point behind the
    camera can also project into the image rectangle, so points must be on the same side of the
    camera's image plane as the calibration points (same sign of the homogeneous w).
    """
    track = cfg.track(track_id)
    positions = np.arange(0.0, track.length_m + 1e-9, 0.05)
    floor = np.array([point_at_position(track.polyline, float(s))[0] for s in positions])
    hom = (cam.floor_to_pixel @ np.c_[floor, np.ones(len(floor))].T).T
    centre = np.mean([p.floor for p in cam.calibration], axis=0)
    front = np.sign(hom[:, 2]) == np.sign((cam.floor_to_pixel @ [*centre, 1.0])[2])
    px = hom[:, :2] / hom[:, 2:3]
    inside = (px[:, 0] >= 0) & (px[:, 0] <= cam.width) & (px[:, 1] >= 0) & (px[:, 1] <= cam.height)
    seen = positions[front & inside]
    if len(seen) == 0:
        return None
    return float(seen.min()), float(seen.max())


def test_shipped_facility_is_valid(shipped: FacilityConfig) -> None:
    assert shipped.facility_id == "depot-north"
    assert len(shipped.tracks) == 3
    assert len(shipped.cameras) >= 6
    assert {"prod", "dev"} <= set(shipped.flows)
    assert all(cam.pose is not None for cam in shipped.cameras), "the simulator renders every one"


def test_no_camera_sees_a_whole_locomotive(shipped: FacilityConfig) -> None:
    shortest = min(m.length_m for m in shipped.locomotive_models)
    for cam in shipped.cameras:
        assert cam.tracks, f"{cam.id} lists no tracks"
        for track_id in cam.tracks:
            stretch = visible_stretch(shipped, cam, track_id)
            assert stretch is not None, f"{cam.id} does not see {track_id} at all"
            length = stretch[1] - stretch[0]
            # Long enough to see a locomotive end well, too short to see a whole locomotive.
            assert 8.0 < length < shortest, f"{cam.id} sees {length:.1f} m of {track_id}"


def test_neighbouring_views_overlap_and_cover_every_track(shipped: FacilityConfig) -> None:
    for track in shipped.tracks:
        stretches = sorted(
            s
            for cam in shipped.cameras
            if track.id in cam.tracks and (s := visible_stretch(shipped, cam, track.id))
        )
        assert len(stretches) >= 2, f"{track.id} is seen by fewer than two cameras"
        assert stretches[0][0] == pytest.approx(0.0), f"start of {track.id} is not seen"
        assert max(end for _, end in stretches) == pytest.approx(track.length_m)
        for (_, prev_end), (next_start, _) in pairwise(stretches):
            assert next_start < prev_end, f"gap on {track.id} between {prev_end} and {next_start}"


def test_calibration_maps_its_own_points(shipped: FacilityConfig) -> None:
    for cam in shipped.cameras:
        floor = cam.floor_points([p.pixel for p in cam.calibration])
        np.testing.assert_allclose(floor, [p.floor for p in cam.calibration], atol=0.05)


def test_lookups_name_what_is_known(shipped: FacilityConfig) -> None:
    assert shipped.camera("cam-s1").id == "cam-s1"
    assert shipped.track("T2").length_m == pytest.approx(48.0)
    assert shipped.locomotive_model("TEM2").plate_matches("TEM2-0042")
    assert not shipped.locomotive_model("TEM2").plate_matches("TEM2-42")
    with pytest.raises(KeyError, match="no camera 'cam-x' in the facility config"):
        shipped.camera("cam-x")
    with pytest.raises(KeyError, match=r"no flow 'qa' in the facility config \(known: prod, dev\)"):
        shipped.flow("qa")


# --- bad configs: each edit of the shipped file and the exact line(s) it must produce --------

Edit = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Edit:
    """An edit that sets a dotted path (list indexes as numbers), e.g. ``cameras.0.source``."""

    def edit(data: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = data
        for part in parents:
            node = node[part]
        node[last] = value

    return edit


def _delete(path: str) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = data
        for part in parents:
            node = node[part]
        del node[last]

    return edit


def _rename(path: str, old: str, new: str) -> Edit:
    """An edit that renames key ``old`` of the mapping at ``path`` (a typo in a field name)."""

    def edit(data: dict[str, Any]) -> None:
        node: Any = data
        for part in path.split("."):
            node = node[int(part) if part.isdigit() else part]
        node[new] = node.pop(old)

    return edit


def _no_pose(index: int, calibration: list[dict[str, list[float]]]) -> Edit:
    """A real camera (no simulator pose) with its own calibration."""

    def edit(data: dict[str, Any]) -> None:
        cam = data["cameras"][index]
        cam.pop("pose")
        cam["calibration"] = calibration

    return edit


def _rename_flow(old: str, new: str) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        data["flows"][new] = data["flows"].pop(old)

    return edit


def _both(*edits: Edit) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        for e in edits:
            e(data)

    return edit


SQUARE = [
    {"pixel": [100, 100], "floor": [0, 10]},
    {"pixel": [1100, 100], "floor": [10, 10]},
    {"pixel": [1100, 650], "floor": [10, 0]},
    {"pixel": [100, 650], "floor": [0, 0]},
]
SCHEMES = "use one of rtsp://, rtsps://, http://, https://, file://, webrtc://"
OTHER_TRACKS = "use one of ['T1', 'T3'] or add the track"

BAD_CONFIGS = [
    pytest.param(
        _set("tracks.0.gates", ["end", "end"]),
        ["tracks[0].gates: lists an end twice; write [start], [end] or [start, end]"],
        id="gate-listed-twice",
    ),
    pytest.param(
        _set("cameras.0.source", "ftp://192.0.2.1/cam"),
        [f"cameras[0].source: URL scheme 'ftp' is not supported; {SCHEMES}"],
        id="bad-url-scheme",
    ),
    pytest.param(
        _set("cameras.1.source", "192.0.2.1:554/stream1"),
        [
            "cameras[1].source: URL '192.0.2.1:554/stream1' has no scheme; "
            "write e.g. rtsp://192.0.2.10:554/stream1"
        ],
        id="url-without-scheme",
    ),
    pytest.param(
        _set("cameras.2.source", "rtsp:///stream1"),
        [
            "cameras[2].source: URL 'rtsp:///stream1' has no host; "
            "write e.g. rtsp://192.0.2.10:554/stream1"
        ],
        id="url-without-host",
    ),
    pytest.param(
        _set("cameras.2.source", "file://"),
        ["cameras[2].source: file:// URL has no path; write e.g. file:///data/cam1.mp4"],
        id="file-url-without-path",
    ),
    pytest.param(
        _no_pose(0, SQUARE[:3]),
        [
            "cameras[0].calibration: has 3 point pairs; measure at least 4 pixel <-> floor "
            "pairs (corners of a floor area the camera sees)"
        ],
        id="three-calibration-points",
    ),
    pytest.param(
        _no_pose(0, [{"pixel": [100 * i, 50 * i], "floor": [i, i % 2]} for i in range(1, 5)]),
        [
            "cameras[0]: calibration is degenerate (the pixel points lie on one line); "
            "pick points spread over the image, no three on one line"
        ],
        id="collinear-calibration",
    ),
    pytest.param(
        # The fifth pair is 3 m off; a plain least-squares residual would blame another pair.
        _no_pose(3, [*SQUARE, {"pixel": [600, 375], "floor": [8, 5]}]),
        [
            "cameras[3]: calibration point 4 is 3.00 m off the homography the other points "
            "give; re-measure it (pixel and floor must show the same spot)"
        ],
        id="inconsistent-calibration-point",
    ),
    pytest.param(
        _no_pose(0, [*SQUARE[:3], {"pixel": [-5, 650], "floor": [0, 0]}]),
        [
            "cameras[0]: calibration point 3 pixel [-5.0, 650.0] is outside the 1280x720 "
            "image; fix the pixel or the width/height"
        ],
        id="pixel-outside-image",
    ),
    pytest.param(
        _set("cameras.0.pose.hfov_deg", 60.0),
        [
            "cameras[0].calibration: point 3 is 45.0 px from where the pose projects it; "
            "re-derive the calibration with `depotwatch sim calibrate` or fix the pose"
        ],
        id="calibration-disagrees-with-pose",
    ),
    pytest.param(
        _set("cameras.5.id", "cam-s2"),
        ["cameras: id 'cam-s2' is used twice; give each entry its own id"],
        id="duplicate-camera-id",
    ),
    pytest.param(
        _set("tracks.2.id", "T1"),
        [
            "tracks: id 'T1' is used twice; give each entry its own id",
            *(
                f"cameras[{i}].tracks: unknown track 'T3'; use one of ['T1', 'T2'] or add the track"
                for i in range(4, 8)
            ),
        ],
        id="duplicate-track-id",
    ),
    pytest.param(
        _set("cameras.6.tracks", ["T2", "T4"]),
        ["cameras[6].tracks: unknown track 'T4'; use one of ['T1', 'T2', 'T3'] or add the track"],
        id="unknown-track-reference",
    ),
    pytest.param(
        _set("cameras.3.id", "cam s4"),
        [
            "cameras[3].id: 'cam s4' is not a valid id; use letters, digits, '_', '.', '-' "
            "(at most 63), starting with a letter or digit"
        ],
        id="bad-camera-id",
    ),
    pytest.param(
        _rename_flow("dev", "Dev_2"),
        [
            "flows: flow name 'Dev_2' must be lower-case letters, digits and '-', starting with "
            "a letter (it becomes part of topic names)"
        ],
        id="bad-flow-name",
    ),
    pytest.param(
        _set("flows.dev.positions_from", "staging"),
        ["flows.dev.positions_from: unknown flow 'staging'; use one of ['dev', 'prod']"],
        id="positions-from-unknown-flow",
    ),
    pytest.param(
        _both(
            _set("flows.shadow", {"state_estimator": {}}),
            _set("flows.dev.identities_from", "shadow"),
        ),
        ["flows.dev.identities_from: flow 'shadow' runs no plate_ocr; point at a flow that does"],
        id="identities-from-flow-without-ocr",
    ),
    pytest.param(
        _set("flows.prod.state_estimator", {"hidden_body_gate_m": 2.0}),
        [
            "flows.prod.state_estimator: hidden_body_gate_m (2.0) must be at least "
            "inferred_end_gate_m (3.5): it is how far that gate may grow; raise "
            "hidden_body_gate_m or lower inferred_end_gate_m"
        ],
        id="gate-that-would-shrink",
    ),
    pytest.param(
        _set("locomotive_models.1.plate_pattern", "^ChME3-(\\d{4}$"),
        [
            "locomotive_models[1].plate_pattern: is not a valid regular expression "
            "(missing ), unterminated subpattern at position 7); fix the pattern"
        ],
        id="bad-plate-regex",
    ),
    pytest.param(
        _set("tracks.1.polyline", [[0, 9], [24, 9], [24, 9], [48, 9]]),
        ["tracks[1].polyline: points 1 and 2 coincide; remove the duplicate point"],
        id="zero-length-track-segment",
    ),
    pytest.param(
        _set("tracks.1.polyline", [[0, 9]]),
        ["tracks[1].polyline: List should have at least 2 items after validation, not 1"],
        id="one-point-track",
    ),
    pytest.param(
        _set("cameras.4.fsp", 2),
        ["cameras[4].fsp: is not a known field; remove it or check its spelling"],
        id="unknown-field-typo",
    ),
    pytest.param(
        _rename("flows.prod.position_estimator", "weights", "weigths"),
        [
            "flows.prod.position_estimator.weights: is required; add it",
            "flows.prod.position_estimator.weigths: is not a known field; "
            "remove it or check its spelling",
        ],
        id="misspelt-required-field",
    ),
    pytest.param(
        _delete("cameras.7.source"),
        ["cameras[7].source: is required; add it"],
        id="missing-field",
    ),
    pytest.param(
        _delete("facility_id"),
        ["facility_id: is required; add it"],
        id="missing-top-level-field",
    ),
    pytest.param(
        _set("cameras.0.fps", 0),
        ["cameras[0].fps: Input should be greater than 0"],
        id="zero-fps",
    ),
]


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "facility.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize(("edit", "expected"), BAD_CONFIGS)
def test_bad_config_is_reported_in_one_line_per_problem(
    shipped_data: dict[str, Any], tmp_path: Path, edit: Edit, expected: list[str]
) -> None:
    data = copy.deepcopy(shipped_data)
    edit(data)
    path = _write(tmp_path, data)

    with pytest.raises(ConfigError) as caught:
        load_facility(path)

    assert caught.value.problems == expected
    assert caught.value.source == str(path)
    assert str(caught.value).splitlines() == [f"{path}: {line}" for line in expected]
    assert all("\n" not in line for line in caught.value.problems)


def test_every_problem_in_a_file_is_reported(shipped_data: dict[str, Any]) -> None:
    data = copy.deepcopy(shipped_data)
    _set("cameras.0.source", "ftp://192.0.2.1/cam")(data)
    _set("cameras.2.fsp", 3)(data)
    _set("locomotive_models.0.plate_pattern", "((")(data)
    _set("tracks.2.id", "T2")(data)  # a cross-field problem beside the field errors
    _set("flows.dev.positions_from", "nope")(data)

    with pytest.raises(ConfigError) as caught:
        parse_facility(data, "depot.yaml")

    assert caught.value.problems == [
        f"cameras[0].source: URL scheme 'ftp' is not supported; {SCHEMES}",
        "cameras[2].fsp: is not a known field; remove it or check its spelling",
        "locomotive_models[0].plate_pattern: is not a valid regular expression "
        "(missing ), unterminated subpattern at position 1); fix the pattern",
        "tracks: id 'T2' is used twice; give each entry its own id",
        *(
            f"cameras[{i}].tracks: unknown track 'T3'; use one of ['T1', 'T2'] or add the track"
            for i in range(4, 8)
        ),
        "flows.dev.positions_from: unknown flow 'nope'; use one of ['dev', 'prod']",
    ]


def test_cross_field_problems_alone_are_each_reported_once(shipped_data: dict[str, Any]) -> None:
    data = copy.deepcopy(shipped_data)
    _set("cameras.1.id", "cam-s1")(data)
    _set("cameras.0.tracks", ["T1", "T9"])(data)
    with pytest.raises(ConfigError) as caught:
        parse_facility(data)
    assert caught.value.problems == [
        "cameras: id 'cam-s1' is used twice; give each entry its own id",
        "cameras[0].tracks: unknown track 'T9'; use one of ['T1', 'T2', 'T3'] or add the track",
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param(
            "facility_id: depot\ntracks:\n  - id: T1\n   polyline: [[0, 0], [1, 0]]\n",
            "line 4, column 4: not valid YAML (expected <block end>, but found '<block mapping "
            "start>'); fix the syntax",
            id="bad-indent",
        ),
        pytest.param(
            "facility_id: depot\n  tracks: 3\n",
            "line 2, column 9: not valid YAML (mapping values are not allowed here); "
            "fix the syntax",
            id="mapping-in-scalar",
        ),
        pytest.param(
            "facility_id: depot\ntracks: [[0, 0]\ncameras: []\n",
            "line 3, column 1: not valid YAML (expected ',' or ']', but got '<scalar>'); "
            "fix the syntax",
            id="unclosed-bracket",
        ),
        pytest.param(
            "- facility_id: depot\n- tracks: []\n",
            "the file must be a YAML mapping with facility_id, tracks, ...",
            id="a-list",
        ),
        pytest.param(
            "just text\n",
            "the file must be a YAML mapping with facility_id, tracks, ...",
            id="a-scalar",
        ),
        pytest.param(
            "",
            "the file must be a YAML mapping with facility_id, tracks, ...",
            id="empty-file",
        ),
    ],
)
def test_unreadable_yaml_is_one_line_with_its_position(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "facility.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_facility(path)
    assert caught.value.problems == [problem]


def test_missing_file_says_how_to_point_at_one(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError) as caught:
        load_facility(missing)
    assert str(caught.value) == (
        f"{missing}: file not found; pass --config PATH or set DEPOTWATCH_FACILITY_CONFIG"
    )


def test_config_error_survives_pickling_from_a_worker_process(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_facility(tmp_path / "nowhere.yaml")
    copied = pickle.loads(pickle.dumps(caught.value))
    assert (copied.source, copied.problems) == (caught.value.source, caught.value.problems)
    assert str(copied) == str(caught.value)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_facility(tmp_path)
    assert caught.value.problems == ["cannot be read (Is a directory)"]


def test_a_real_camera_needs_no_pose(shipped_data: dict[str, Any]) -> None:
    data = copy.deepcopy(shipped_data)
    _no_pose(0, SQUARE)(data)
    cfg = parse_facility(data)
    cam = cfg.cameras[0]
    assert cam.pose is None
    np.testing.assert_allclose(cam.floor_points([(600, 375)]), [[5.0, 5.0]], atol=1e-9)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtsp://op:hunter2@192.0.2.7:554/s1", "rtsp://***@192.0.2.7:554/s1"),
        ("rtsp://op@192.0.2.7/s1", "rtsp://***@192.0.2.7/s1"),
        ("rtsp://192.0.2.7:554/s1", "rtsp://192.0.2.7:554/s1"),
        ("file:///data/cam1.mp4", "file:///data/cam1.mp4"),
        ("rtsp://u:p@[2001:db8::1]:554/s", "rtsp://***@[2001:db8::1]:554/s"),
        ("rtsp://u:p@host:abc/x", "rtsp://***@host:abc/x"),
        ("http://cam/snap?user=a&password=b&res=hd", "http://cam/snap?user=a&password=***&res=hd"),
    ],
)
def test_redact_url_hides_user_and_password(url: str, shown: str) -> None:
    from schemas.facility import redact_url

    assert redact_url(url) == shown


def test_yaml_text_is_checked_like_a_file() -> None:
    from schemas.facility import parse_facility_yaml

    with pytest.raises(ConfigError) as err:
        parse_facility_yaml("facility_id: [unclosed\n", "edit")
    assert err.value.source == "edit"
    assert err.value.problems[0].startswith("line 2, column 1: not valid YAML")


def test_a_bad_source_url_is_refused_without_showing_its_password() -> None:
    data = yaml.safe_load((REPO / "facility.yaml").read_text())
    data["cameras"][0]["source"] = "rtsp://op:hunter2@192.0.2.7:99999/s1"
    with pytest.raises(ConfigError) as err:
        parse_facility(data)
    (problem,) = err.value.problems
    assert problem.startswith("cameras[0].source: URL 'rtsp://***@192.0.2.7:99999/s1' has a bad")
    assert "hunter2" not in problem


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("webrtc://cam-other", "names another camera; a browser camera's source is webrtc://<its"),
        ("webrtc://cam-s1:8000", "a browser camera is named by its id alone"),
        ("webrtc://cam-s1/stream", "a browser camera is named by its id alone"),
        ("webrtc://u:p@cam-s1", "a browser camera is named by its id alone"),
        ("webrtc://", "has no host"),
    ],
)
def test_a_browser_camera_source_names_its_own_camera(source: str, says: str) -> None:
    data = yaml.safe_load((REPO / "facility.yaml").read_text())
    data["cameras"][0]["source"] = source
    with pytest.raises(ConfigError) as err:
        parse_facility(data)
    (problem,) = err.value.problems
    assert problem.startswith("cameras[0]")
    assert says in problem
    assert ":p@" not in problem


def test_browser_cameras_are_enabled_but_not_read_by_a_capture_process() -> None:
    data = yaml.safe_load((REPO / "facility.yaml").read_text())
    cid = data["cameras"][0]["id"]
    data["cameras"][0]["source"] = f"webrtc://{cid}"
    cfg = parse_facility(data)
    assert cfg.cameras[0].webrtc
    assert cid in {c.id for c in cfg.enabled_cameras}
    assert cid not in {c.id for c in cfg.captured_cameras}
    assert len(cfg.captured_cameras) == len(cfg.enabled_cameras) - 1


def test_only_a_browser_camera_may_go_without_calibration() -> None:
    data = yaml.safe_load((REPO / "facility.yaml").read_text())
    cid = data["cameras"][0]["id"]
    del data["cameras"][0]["calibration"]
    with pytest.raises(ConfigError) as err:
        parse_facility(data)
    (problem,) = err.value.problems
    assert problem.startswith("cameras[0].calibration: has 0 point pairs; measure at least 4")

    data["cameras"][0]["source"] = f"webrtc://{cid}"
    cfg = parse_facility(data)  # its pose needs no calibration to agree with
    cam = cfg.cameras[0]
    assert not cam.calibrated
    assert cfg.cameras[1].calibrated
    with pytest.raises(ValueError, match=f"camera '{cid}' has no calibration.*add at least 4"):
        _ = cam.pixel_to_floor

    data["cameras"][0]["calibration"] = data["cameras"][1]["calibration"][:2]
    with pytest.raises(ConfigError, match="calibration: has 2 point pairs"):
        parse_facility(data)
