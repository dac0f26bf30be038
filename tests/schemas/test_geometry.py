"""Plane geometry: homography fitting, pinhole cameras, positions along track polylines."""

from __future__ import annotations

import math

import numpy as np
import pytest

from schemas.geometry import (
    DegenerateHomographyError,
    apply_homography,
    fit_homography,
    least_consistent_point,
    locate_on_polyline,
    pinhole_extrinsics,
    pinhole_floor_homography,
    point_at_position,
    polyline_length,
    reprojection_errors,
    stretches,
)

# (position, look_at, hfov_deg, width, height): cameras like the depot's, and some odd ones.
PINHOLE_CAMERAS = [
    ((6.0, -2.0, 10.0), (6.0, 5.5, 0.0), 56.0, 1280, 720),
    ((42.0, 20.0, 10.0), (42.0, 12.5, 0.0), 56.0, 1280, 720),
    ((0.0, 0.0, 4.0), (10.0, 3.0, 0.0), 90.0, 640, 480),
    ((-5.0, 30.0, 25.0), (20.0, 10.0, 0.0), 30.0, 1920, 1080),
]

FLOOR_GRID = [(x, y) for x in (-3.0, 0.0, 4.0, 9.5) for y in (-2.0, 1.0, 5.0)]


def _floor_points_near(look_at: tuple[float, float, float]) -> list[tuple[float, float]]:
    return [(look_at[0] + dx, look_at[1] + dy) for dx, dy in FLOOR_GRID]


@pytest.mark.parametrize("camera", PINHOLE_CAMERAS)
def test_fit_homography_recovers_a_pinhole_camera_exactly(camera: tuple) -> None:
    floor_to_pixel = pinhole_floor_homography(*camera)
    floor = _floor_points_near(camera[1])
    pixels = apply_homography(floor_to_pixel, floor)

    fitted = fit_homography(pixels, floor)

    expected = np.linalg.inv(floor_to_pixel)
    np.testing.assert_allclose(fitted, expected / expected[2, 2], rtol=1e-6, atol=1e-9)
    assert reprojection_errors(fitted, pixels, floor).max() < 1e-6


@pytest.mark.parametrize("camera", PINHOLE_CAMERAS)
def test_fit_from_exactly_four_pairs_maps_other_points_right(camera: tuple) -> None:
    floor_to_pixel = pinhole_floor_homography(*camera)
    floor = _floor_points_near(camera[1])
    corners = [floor[0], floor[2], floor[-3], floor[-1]]

    pixel_to_floor = fit_homography(apply_homography(floor_to_pixel, corners), corners)

    mapped = apply_homography(pixel_to_floor, apply_homography(floor_to_pixel, floor))
    np.testing.assert_allclose(mapped, floor, atol=1e-6)


@pytest.mark.parametrize(
    ("src", "dst", "message"),
    [
        pytest.param(
            [(0, 0), (100, 100), (200, 200), (300, 300)],
            [(0, 0), (1, 0), (1, 1), (0, 1)],
            "the pixel points lie on one line",
            id="collinear-pixels",
        ),
        pytest.param(
            [(0, 0), (100, 0), (100, 100), (0, 100)],
            [(0, 0), (1, 0), (2, 0), (3, 0)],
            "the floor points lie on one line",
            id="collinear-floor",
        ),
        pytest.param(
            [(0, 0), (100, 0), (100, 100)],
            [(0, 0), (1, 0), (1, 1)],
            "need at least 4 point pairs, got 3",
            id="three-pairs",
        ),
        pytest.param(
            [(5, 5)] * 4,
            [(0, 0), (1, 0), (1, 1), (0, 1)],
            "the pixel points lie on one line",
            id="coincident-pixels",
        ),
        pytest.param(
            [(0, 0), (100, 0), (100, 100), (0, 100)],
            [(0, 0), (1, 0), (1, 1)],
            "source and destination must be N x 2 with the same N",
            id="length-mismatch",
        ),
    ],
)
def test_degenerate_point_sets_are_refused(
    src: list[tuple[float, float]], dst: list[tuple[float, float]], message: str
) -> None:
    with pytest.raises(DegenerateHomographyError, match=message):
        fit_homography(src, dst)


@pytest.mark.parametrize("bad", range(6))
def test_least_consistent_point_names_the_bad_pair(bad: int) -> None:
    camera = PINHOLE_CAMERAS[0]
    floor_to_pixel = pinhole_floor_homography(*camera)
    floor = [(2.0, 3.0), (10.0, 3.5), (1.0, 9.0), (11.0, 9.5), (6.0, 6.0), (4.0, 4.5)]
    pixels = apply_homography(floor_to_pixel, floor)
    measured = [list(p) for p in floor]
    measured[bad][0] += 2.0  # someone wrote down the wrong floor mark

    index, off_m = least_consistent_point(pixels, measured)

    assert index == bad
    assert off_m == pytest.approx(2.0, abs=1e-6)


def test_least_consistent_point_with_four_pairs_is_the_exact_fit_residual() -> None:
    src = [(0, 0), (100, 0), (100, 100), (0, 100)]
    dst = [(0, 0), (1, 0), (1, 1), (0, 1)]
    index, off = least_consistent_point(src, dst)
    assert 0 <= index < 4
    assert off < 1e-9


# An L-shaped track: 10 m east along y=0, then 5 m north along x=10.
L_TRACK = [(0.0, 0.0), (10.0, 0.0), (10.0, 5.0)]


@pytest.mark.parametrize(
    ("point", "position_m", "distance_m"),
    [
        ((5.0, 1.0), 5.0, 1.0),
        ((5.0, -1.5), 5.0, 1.5),
        ((11.0, 3.0), 13.0, 1.0),
        ((10.0, 0.0), 10.0, 0.0),
        ((11.0, -1.0), 10.0, math.sqrt(2.0)),
        ((-2.0, 0.0), 0.0, 2.0),
        ((12.0, 7.0), 15.0, math.sqrt(8.0)),
        ((9.0, 4.0), 14.0, 1.0),
    ],
)
def test_locate_on_l_shaped_polyline(
    point: tuple[float, float], position_m: float, distance_m: float
) -> None:
    found = locate_on_polyline(L_TRACK, point)
    assert found.position_m == pytest.approx(position_m)
    assert found.distance_m == pytest.approx(distance_m)


@pytest.mark.parametrize(
    ("position_m", "point", "direction"),
    [
        (0.0, (0.0, 0.0), (1.0, 0.0)),
        (4.0, (4.0, 0.0), (1.0, 0.0)),
        (12.0, (10.0, 2.0), (0.0, 1.0)),
        (15.0, (10.0, 5.0), (0.0, 1.0)),
        (17.0, (10.0, 7.0), (0.0, 1.0)),  # beyond the end: extrapolated
        (-1.0, (-1.0, 0.0), (1.0, 0.0)),  # before the start: extrapolated
    ],
)
def test_point_at_position_on_l_shaped_polyline(
    position_m: float, point: tuple[float, float], direction: tuple[float, float]
) -> None:
    xy, unit = point_at_position(L_TRACK, position_m)
    assert xy == pytest.approx(point)
    assert unit == pytest.approx(direction)


def test_point_at_position_and_locate_are_inverse() -> None:
    for position in np.linspace(0.0, 15.0, 31):
        xy, _ = point_at_position(L_TRACK, float(position))
        assert locate_on_polyline(L_TRACK, xy).position_m == pytest.approx(position)


def test_polyline_length() -> None:
    assert polyline_length(L_TRACK) == pytest.approx(15.0)


@pytest.mark.parametrize("camera", PINHOLE_CAMERAS)
def test_pinhole_floor_homography_agrees_with_full_projection(camera: tuple) -> None:
    k, r, t = pinhole_extrinsics(*camera)
    floor = _floor_points_near(camera[1])
    world = np.c_[np.asarray(floor), np.zeros(len(floor))]
    cam = (r @ world.T).T + t
    assert (cam[:, 2] > 0).all(), "test points must lie in front of the camera"
    projected = (k @ cam.T).T
    expected = projected[:, :2] / projected[:, 2:3]

    got = apply_homography(pinhole_floor_homography(*camera), floor)

    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("camera", PINHOLE_CAMERAS)
def test_look_at_point_lands_in_the_image_centre(camera: tuple) -> None:
    _, look_at, _, width, height = camera
    pixel = apply_homography(pinhole_floor_homography(*camera), [look_at[:2]])[0]
    assert pixel == pytest.approx((width / 2, height / 2), abs=1e-6)


@pytest.mark.parametrize(
    ("position", "look_at", "message"),
    [
        ((1.0, 2.0, 3.0), (1.0, 2.0, 3.0), "position and look_at coincide"),
        ((1.0, 2.0, 10.0), (1.0, 2.0, 0.0), "looks straight up or down"),
    ],
)
def test_impossible_camera_poses_are_refused(
    position: tuple[float, float, float], look_at: tuple[float, float, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        pinhole_extrinsics(position, look_at, 60.0, 640, 480)


def test_points_on_the_horizon_map_to_infinity() -> None:
    # This homography sends the line x + y = 1 to infinity (w = 0).
    h = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, -1.0]])
    mapped = apply_homography(h, [(0.5, 0.5), (2.0, 0.0)])
    assert np.isinf(mapped[0]).all()
    assert mapped[1] == pytest.approx((2.0, 0.0))


@pytest.mark.parametrize(
    ("mask", "expected"),
    [
        ([False, False, False], []),
        ([True, True, True], [(0.0, 1.0)]),
        ([True, False, True], [(0.0, 0.0), (1.0, 1.0)]),
        ([False, True, True, False], [(0.5, 1.0)]),
    ],
)
def test_stretches_are_the_runs_where_the_mask_holds(
    mask: list[bool], expected: list[tuple[float, float]]
) -> None:
    positions = [0.5 * i for i in range(len(mask))]
    assert stretches(positions, mask, 0.5) == expected
