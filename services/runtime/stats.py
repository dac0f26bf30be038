"""Summary statistics, one definition each, for services, evaluation and benchmarks alike."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values``, numpy's default definition (linear between the
    two closest ranks); None when there are no values."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    data = np.fromiter(values, dtype=np.float64)
    if data.size == 0:
        return None
    return float(np.quantile(data, q))
