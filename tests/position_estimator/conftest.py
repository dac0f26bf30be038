"""Fixtures of the position estimator tests."""

from estimator_rig import dev_weights

__all__ = ["dev_weights"]
