"""The one percentile definition (services, evaluation and benchmarks share it)."""

from __future__ import annotations

import pytest

from services.runtime.stats import percentile


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 0.5, None),
        ([3.0], 0.99, 3.0),
        ([4.0, 1.0, 3.0, 2.0], 0.5, 2.5),  # unsorted input, linear between the middle two
        ([float(v) for v in range(1, 101)], 0.95, 95.05),
        ([1.0, 2.0], 0.0, 1.0),
        ([1.0, 2.0], 1.0, 2.0),
    ],
)
def test_percentile_is_numpys_linear_quantile(
    values: list[float], q: float, expected: float | None
) -> None:
    assert percentile(values, q) == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize("q", [-0.1, 1.5, 95.0])
def test_a_quantile_outside_0_1_is_an_error(q: float) -> None:
    with pytest.raises(ValueError, match="quantile must be in"):
        percentile([1.0], q)
