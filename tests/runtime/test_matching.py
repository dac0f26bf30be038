"""The one locomotive matcher and the assignment under it (pure, plain values)."""

from __future__ import annotations

import numpy as np
import pytest

from services.runtime.matching import Matching, match_locomotives, optimal_pairs

INF = np.inf


def test_pairs_are_the_cheapest_among_allowed_entries() -> None:
    cost = np.array([[1.0, 5.0], [2.0, 1.0]])
    assert sorted(optimal_pairs(cost)) == [(0, 0), (1, 1)]


def test_as_many_pairs_as_possible_before_the_cheapest() -> None:
    # Greedy takes (0, 0) at cost 1 and leaves row 1 with nothing; two pairs are possible.
    cost = np.array([[1.0, 2.0], [1.5, INF]])
    assert sorted(optimal_pairs(cost)) == [(0, 1), (1, 0)]


def test_forbidden_entries_are_never_paired() -> None:
    assert optimal_pairs(np.array([[INF, INF], [INF, 3.0]])) == [(1, 1)]
    assert optimal_pairs(np.full((2, 3), INF)) == []
    assert optimal_pairs(np.zeros((0, 4))) == []


def test_negative_costs_work_as_scores() -> None:
    # -IoU: the larger overlap wins.
    assert optimal_pairs(np.array([[-0.6, -0.9]])) == [(0, 1)]


def test_a_cost_that_is_not_a_matrix_is_refused() -> None:
    with pytest.raises(ValueError, match="2-D"):
        optimal_pairs(np.zeros(3))


def test_locomotives_pair_on_the_same_track_within_the_gate() -> None:
    left = [("T1", 3.0, 20.0), ("T2", 3.0, 20.0), ("T1", 30.0, 47.0)]
    right = [("T2", 21.0, 4.0), ("T1", 29.0, 12.0), ("T3", 3.0, 20.0)]
    m = match_locomotives(left, right)
    # T2: same place (ends in the other order); T1 first one: centre 9 m off, too far.
    assert m == Matching(pairs=[(1, 0)], only_left=[0, 2], only_right=[1, 2])


def test_every_locomotive_that_can_have_a_partner_gets_one() -> None:
    # Centres 10 and 13 vs 11.5 and 8: nearest-first pairs 10-11.5 and strands 13.
    left = [("T1", 2.0, 18.0), ("T1", 5.0, 21.0)]
    right = [("T1", 3.5, 19.5), ("T1", 0.0, 16.0)]
    assert match_locomotives(left, right, gate_m=4.0).pairs == [(0, 1), (1, 0)]


def test_a_negative_gate_is_refused() -> None:
    with pytest.raises(ValueError, match="gate_m"):
        match_locomotives([], [], gate_m=-1.0)
