"""Fixtures of the plate reader tests."""

from estimator_rig import dev_weights

__all__ = ["dev_weights"]
