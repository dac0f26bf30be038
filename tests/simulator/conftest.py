"""Fixtures of the simulator tests: the repository facility and one shared renderer."""

from __future__ import annotations

import pytest

from schemas.facility import FacilityConfig, load_facility
from services.simulator.render import Renderer
from tests.simulator.scenes import REPO, TEST_CAMERAS


@pytest.fixture(scope="session")
def facility() -> FacilityConfig:
    """The example depot of the repository."""
    return load_facility(REPO / "facility.yaml")


@pytest.fixture(scope="session")
def renderer(facility: FacilityConfig) -> Renderer:
    """A renderer for a few cameras (backgrounds are built once per session)."""
    return Renderer(facility, TEST_CAMERAS)
