"""Sight lines blocked by locomotive bodies, observability marking, identity scoring."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from schemas.ground_truth import GroundTruth, TrueLocomotive
from services.evaluation.compare import Placed, compare_placed, placed_from_truth
from services.evaluation.observability import locomotive_box, sightlines_blocked
from services.state_estimator.coverage import in_view

# A locomotive along x on the line y = 5 (x from 0 to 18), 3 m wide and 4.5 m tall.
BOX = locomotive_box((0.0, 5.0), (18.0, 5.0))
CAMERA = (9.0, 0.0, 10.0)


@pytest.mark.parametrize(
    ("target", "hidden"),
    [
        ((9.0, 10.0, 0.0), True),  # floor point straight behind the body
        ((9.0, 2.0, 0.0), False),  # in front of it
        ((30.0, 10.0, 0.0), False),  # beside it: the sight line passes its end
        ((9.0, 30.0, 0.0), False),  # far behind: the sight line clears the roof
        ((9.0, 8.0, 2.5), True),  # a plate at 2.5 m behind the body
    ],
)
def test_a_body_hides_what_stands_behind_it(
    target: tuple[float, float, float], hidden: bool
) -> None:
    assert sightlines_blocked(CAMERA, [target], [BOX])[0] == hidden


def test_an_ignored_body_hides_nothing_and_no_bodies_hide_nothing() -> None:
    ignore = np.array([[True]])
    assert not sightlines_blocked(CAMERA, [(9.0, 10.0, 0.0)], [BOX], ignore=ignore)[0]
    assert list(sightlines_blocked(CAMERA, [(9.0, 10.0, 0.0)], [])) == [False]


def test_a_rotated_body_blocks_along_its_own_axis() -> None:
    diagonal = locomotive_box((0.0, 0.0), (10.0, 10.0))
    assert sightlines_blocked((10.0, -5.0, 6.0), [(0.0, 10.0, 0.0)], [diagonal])[0]
    assert not sightlines_blocked((10.0, -5.0, 6.0), [(20.0, 0.0, 0.0)], [diagonal])[0]


@pytest.mark.parametrize(
    ("position", "seen"),
    [(5.0, True), (0.1, True), (11.5, True), (11.9, False), (40.1, False), (47.9, True)],
)
def test_ends_at_an_image_edge_are_cut_off_but_track_ends_are_no_edge(
    position: float, seen: bool
) -> None:
    views = [(0.0, 12.0), (40.0, 48.0)]
    assert in_view(views, position, 0.3, 48.0) == seen


def _truth() -> GroundTruth:
    locos = [
        TrueLocomotive(
            locomotive_id=i, track_id="T1", head_m=h, tail_m=h - 17, model="TEM2", plate=p
        )
        for i, h, p in (("A", 20.0, "TEM2-0001"), ("B", 45.0, "TEM2-0002"))
    ]
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return GroundTruth(facility_id="f", scenario="s", seed=1, tick=0, at=at, locomotives=locos)


def test_unobservable_locomotives_are_left_out_and_legible_ones_marked() -> None:
    placed = placed_from_truth(_truth(), {"T1": 48.0}, observable={"A"}, legible={"A"})
    assert [(p.plate, p.legible) for p in placed] == [("TEM2-0001", True)]
    everyone = placed_from_truth(_truth(), {"T1": 48.0})
    assert len(everyone) == 2
    assert not any(p.legible for p in everyone)


def test_identity_is_correct_unknown_or_wrong_per_matched_locomotive() -> None:
    truth = [
        Placed("T1", 20, 3, "TEM2-0001", "TEM2", legible=True),
        Placed("T1", 45, 28, "TEM2-0002", "TEM2", legible=True),
        Placed("T1", 70, 53, "TEM2-0003", "TEM2"),
    ]
    state = [
        Placed("T1", 20, 3, "TEM2-0001", None),
        Placed("T1", 45, 28, None, None),
        Placed("T1", 70, 53, "TEM2-0009", None),
    ]
    c = compare_placed(truth, state, ["T1"])
    assert (c.identity_matches, c.identity_unknown, c.identity_wrong) == (1, 1, 1)
    assert c.identity_total == 3
    assert (c.legible_total, c.legible_identified) == (2, 1)
