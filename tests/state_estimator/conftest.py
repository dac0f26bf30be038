"""Fixtures of the state-estimator tests."""

from __future__ import annotations

import pytest
from state_builders import FACILITY

from schemas.facility import load_facility
from services.state_estimator.fusion import FusionConfig, FusionCore


@pytest.fixture(scope="module")
def core() -> FusionCore:
    """The fusion core of the shipped facility's prod flow."""
    cfg = load_facility(FACILITY)
    return FusionCore(FusionConfig.from_facility(cfg, "prod", cfg.flow("prod").state_estimator))
