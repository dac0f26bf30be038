"""The estimator services' shared start-up: one option set, one-line errors, never a traceback."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from services.plate_ocr.ocr_engine import OcrUnavailableError
from services.position_estimator.detector import WeightsError
from services.runtime.estimator_service import (
    EstimatorConfigError,
    EstimatorStartError,
    estimator_options,
    resolve_weights,
    run_estimator,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def quiet_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The services configure logging at start; in the test process that would replace
    pytest's handlers for every later test."""
    monkeypatch.setattr(
        "services.runtime.estimator_service.configure_logging", lambda *a, **k: None
    )


def _command(error: Exception) -> click.Command:
    @click.command()
    @estimator_options
    def cmd(
        flow: str,
        config_path: Path | None,
        mode: str,
        max_batch: int | None,
    ) -> None:
        def build(*_: object) -> object:
            raise error

        run_estimator("test-estimator", flow, config_path, build)  # type: ignore[arg-type]

    return cmd


@pytest.mark.parametrize(
    "error",
    [
        EstimatorConfigError("facility.yaml: flows.dev.plate_ocr is not set; add it"),
        WeightsError("detector weights /x.pt not found; train them"),
        OcrUnavailableError("rapidocr is not installed; pip install 'depotwatch[ocr]'"),
    ],
)
def test_a_service_that_cannot_start_says_why_in_one_line(
    error: EstimatorStartError, quiet_logs: None
) -> None:
    result = CliRunner().invoke(
        _command(error), ["--flow", "prod", "--config", str(REPO / "facility.yaml")]
    )
    assert result.exit_code == 1
    assert result.output == f"Error: {error}\n"


def test_a_bad_facility_file_is_one_line_too(tmp_path: Path, quiet_logs: None) -> None:
    bad = tmp_path / "facility.yaml"
    bad.write_text("tracks: [\n")
    result = CliRunner().invoke(
        _command(AssertionError("not reached")), ["--flow", "prod", "--config", str(bad)]
    )
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {bad}")
    assert "Traceback" not in result.output


def test_every_estimator_takes_the_same_options_then_its_input() -> None:
    from services.plate_ocr.__main__ import plate_ocr_command
    from services.position_estimator.__main__ import position_estimator_command

    def names(cmd: click.Command) -> list[str]:
        return [p.name or "" for p in cmd.params]

    shared = ["flow", "config_path", "mode", "max_batch"]
    assert names(position_estimator_command) == [*shared, "weights", "frames_topic"]
    assert names(plate_ocr_command) == [*shared, "positions_topic"]


def test_relative_weights_are_relative_to_the_facility_file(tmp_path: Path) -> None:
    config = tmp_path / "site" / "facility.yaml"
    assert resolve_weights("models/x.pt", config) == (tmp_path / "site" / "models/x.pt")
    assert resolve_weights("/abs/x.pt", config) == Path("/abs/x.pt")
