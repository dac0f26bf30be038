"""Helpers of the simulator tests: the repository root and inline scenarios."""

from __future__ import annotations

from pathlib import Path

from services.simulator.world import Scenario, parse_scenario

REPO = Path(__file__).resolve().parents[2]
TEST_CAMERAS = ["cam-s1", "cam-s2", "cam-n2"]


def scenario(**fields: object) -> Scenario:
    """A scenario from keyword fields, validated like a YAML file (no noise by default)."""
    data: dict[str, object] = {"name": "test", "duration_s": 60, "noise_sigma": 0.0}
    data.update(fields)
    return parse_scenario(data, "test scenario")
