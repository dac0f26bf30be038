"""`depotwatch sim` commands that need no GStreamer: scenarios, calibrate, bench-render."""

from __future__ import annotations

import re

import yaml
from click.testing import CliRunner

from services.cli import cli
from tests.simulator.scenes import REPO


def _run(*args: str) -> str:
    result = CliRunner().invoke(cli, ["sim", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_scenarios_lists_the_builtin_files() -> None:
    out = _run("scenarios")
    assert re.search(r"^depot-day\s+demo", out, re.M)
    assert re.search(r"^test-busy\s+test", out, re.M)


def test_calibrate_prints_yaml_the_config_can_take() -> None:
    out = _run("calibrate", "--config", str(REPO / "facility.yaml"), "--camera", "cam-s2")
    data = yaml.safe_load(out)
    assert list(data) == ["cam-s2"]
    assert len(data["cam-s2"]["calibration"]) == 4


def test_bench_render_prints_frames_per_second_per_camera() -> None:
    out = _run("bench-render", "--config", str(REPO / "facility.yaml"), "--frames", "1")
    rates = re.findall(r"^(cam-\S+): 1280x720\s+([\d.]+) frames/s wall", out, re.M)
    assert len(rates) == 8
    assert all(float(r) > 0 for _, r in rates)
    assert "per CPU second" in out


def test_unknown_scenario_is_one_clear_line() -> None:
    result = CliRunner().invoke(cli, ["sim", "render", "--scenario", "nope", "--out", "/tmp/x"])
    assert result.exit_code != 0
    assert "no scenario 'nope'; use one of" in result.output
