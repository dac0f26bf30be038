"""Fixtures of the simulator tests: the repository facility and one shared renderer."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.facility import FacilityConfig, load_facility
from services.simulator.render import Renderer
from services.simulator.world import Scenario, parse_scenario

REPO = Path(__file__).resolve().parents[2]
TEST_CAMERAS = ["cam-s1", "cam-s2", "cam-n2"]


@pytest.fixture(scope="session")
def facility() -> FacilityConfig:
    """The example depot of the repository."""
    return load_facility(REPO / "facility.yaml")


@pytest.fixture(scope="session")
def renderer(facility: FacilityConfig) -> Renderer:
    """A renderer for a few cameras (backgrounds are built once per session)."""
    return Renderer(facility, TEST_CAMERAS)


def scenario(**fields: object) -> Scenario:
    """A scenario from keyword fields, validated like a YAML file."""
    data: dict[str, object] = {"name": "test", "duration_s": 60, "noise_sigma": 0.0}
    data.update(fields)
    return parse_scenario(data, "test scenario")
