"""`depotwatch eval detector` and `eval fusion --detector yolo` with the committed weights."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from services.evaluation.cli import evaluate

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = REPO / "models" / "depot-yolo.pt"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not WEIGHTS.is_file(), reason="needs the committed detector weights"),
]


def test_eval_detector_renders_the_test_split_and_scores_every_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "ultralytics"))
    dataset = tmp_path / "test-split"
    result = CliRunner().invoke(
        evaluate, ["detector", "--dataset", str(dataset), "--scale", "0.05"]
    )
    assert result.exit_code == 0, result.output
    assert (dataset / "images" / "test").is_dir()
    for cls in ("head", "tail", "plate"):
        line = next(x for x in result.output.splitlines() if x.startswith(cls))
        map50 = float(line.split()[3])
        assert map50 >= 0.9, line
        assert line.endswith("ok")
    assert re.search(r"imgsz 352 on \d+ held-out test images", result.output)


def test_eval_fusion_with_the_real_detector_places_the_scenario(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(
        evaluate,
        [
            "fusion",
            "--detector",
            "yolo",
            "--scenario",
            "test-busy",
            "--seed",
            "9501",
            "--max-ticks",
            "30",
            "--warmup",
            "5",
        ],
    )
    assert result.exit_code == 0, result.output
    count = re.search(r"count per track agrees:\s+([\d.]+)%", result.output)
    assert count is not None, result.output
    assert float(count.group(1)) >= 90.0, result.output
    assert "detector models/depot-yolo.pt" in result.output


def test_eval_fusion_names_an_unknown_flow() -> None:
    result = CliRunner().invoke(
        evaluate, ["fusion", "--flow", "qa", "--config", str(REPO / "facility.yaml")]
    )
    assert result.exit_code != 0
    assert "no flow 'qa'" in result.output
