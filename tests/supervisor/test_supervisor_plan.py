"""The supervisor's pure parts: the plan, camera changes, the status table."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.facility import FacilityConfig, load_facility
from services.supervisor.plan import (
    PlanOptions,
    camera_changes,
    plan_services,
    split_available,
)
from services.supervisor.status import Scrape, ServiceRow, counter_totals, format_table, rate

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cfg() -> FacilityConfig:
    return load_facility(REPO / "facility.yaml")


def _with_camera(cfg: FacilityConfig, cid: str, **changes: object) -> FacilityConfig:
    data = cfg.model_dump()
    cams = data["cameras"]
    for cam in cams:
        if cam["id"] == cid:
            cam.update(changes)
    return FacilityConfig.model_validate(data)


def test_plan_runs_every_stage_per_camera_and_flow(cfg: FacilityConfig) -> None:
    specs = plan_services(cfg, PlanOptions(config_path=Path("f.yaml")))
    names = [s.name for s in specs]
    assert names[0] == "sim"
    assert names[1] == "aggregator"
    assert [n for n in names if n.startswith("capture/")] == [
        f"capture/{c.id}" for c in cfg.cameras
    ]
    for flow in ("prod", "dev"):
        for svc in ("position-estimator", "plate-ocr", "state-estimator"):
            assert f"{svc}/{flow}" in names
    assert names[-2:] == ["dashboard", "worker"]  # a job worker, so API jobs run
    cap = next(s for s in specs if s.name == "capture/cam-s1")
    assert cap.argv == ("capture", "--camera", "cam-s1", "--config", "f.yaml")


def test_the_simulator_serves_clips_when_asked(cfg: FacilityConfig) -> None:
    live = plan_services(cfg, PlanOptions(config_path=Path("f.yaml")))[0]
    assert "--from-clips" not in live.argv
    opts = PlanOptions(config_path=Path("f.yaml"), from_clips=True, scenario="test-busy", seed=3)
    sim = plan_services(cfg, opts)[0]
    assert sim.argv == ("sim", "serve", "--config", "f.yaml", "--scenario", "test-busy",
                        "--seed", "3", "--from-clips")  # fmt: skip


def test_plan_without_sim_and_one_flow(cfg: FacilityConfig) -> None:
    specs = plan_services(
        cfg, PlanOptions(config_path=Path("f.yaml"), simulate=False, flows=["dev"], dashboard=False)
    )
    names = {s.name for s in specs}
    assert "sim" not in names
    assert "dashboard" not in names
    assert not any(n.endswith("/prod") for n in names)
    assert "state-estimator/dev" in names


def test_disabled_cameras_get_no_capture(cfg: FacilityConfig) -> None:
    off = _with_camera(cfg, "cam-s2", enabled=False)
    names = {s.name for s in plan_services(off, PlanOptions(config_path=Path("f.yaml")))}
    assert "capture/cam-s2" not in names
    assert "capture/cam-s1" in names


def test_missing_commands_are_skipped_not_fatal(cfg: FacilityConfig) -> None:
    specs = plan_services(cfg, PlanOptions(config_path=Path("f.yaml")))
    run, skip = split_available(specs, lambda cmd: cmd != "plate-ocr")
    assert {s.name for s in skip} == {"plate-ocr/prod", "plate-ocr/dev"}
    assert len(run) + len(skip) == len(specs)


def test_browser_cameras_get_no_capture_process(cfg: FacilityConfig) -> None:
    phone = _with_camera(cfg, "cam-s1", source="webrtc://cam-s1")
    names = [s.name for s in plan_services(phone, PlanOptions(config_path=Path("f.yaml")))]
    assert "capture/cam-s1" not in names
    assert "capture/cam-n1" in names
    # Turning a camera into a browser camera stops its capture process.
    assert camera_changes(cfg, phone).removed == ["cam-s1"]


def test_camera_changes(cfg: FacilityConfig) -> None:
    data = cfg.model_dump()
    new_cam = dict(data["cameras"][0], id="cam-x")
    data["cameras"].append(new_cam)
    added = FacilityConfig.model_validate(data)
    assert camera_changes(cfg, added).added == ["cam-x"]
    assert not camera_changes(cfg, cfg)
    disabled = _with_camera(cfg, "cam-n1", enabled=False)
    assert camera_changes(cfg, disabled).removed == ["cam-n1"]
    moved = _with_camera(cfg, "cam-s1", fps=5.0)
    ch = camera_changes(cfg, moved)
    assert ch.changed == ["cam-s1"]
    assert not ch.added
    assert not ch.removed
    assert ch.describe() == "restarted cam-s1"


METRICS = """# HELP depotwatch_capture_frames_out_total x
# TYPE depotwatch_capture_frames_out_total counter
depotwatch_capture_frames_out_total{camera_id="a"} 10.0
depotwatch_capture_frames_out_total{camera_id="b"} 5.0
# HELP depotwatch_capture_queue_depth x
# TYPE depotwatch_capture_queue_depth gauge
depotwatch_capture_queue_depth{camera_id="a"} 3.0
"""


def test_counter_totals_and_rates() -> None:
    totals = counter_totals(METRICS)
    assert totals == {"depotwatch_capture_frames_out_total": 15.0}
    m = "depotwatch_capture_frames_out_total"
    assert rate(Scrape(0.0, {m: 15.0}), Scrape(2.0, {m: 19.0}), m) == 2.0
    # A counter that went down: the process restarted, the new value is the increase.
    assert rate(Scrape(0.0, {m: 15.0}), Scrape(2.0, {m: 4.0}), m) == 2.0
    assert rate(None, Scrape(2.0, {m: 4.0}), m) is None


def test_status_table_lists_services_and_skipped() -> None:
    table = format_table(
        [ServiceRow("capture/cam-s1", "up", 2, 1.96, 0.0, 123)], ["plate-ocr/prod"], "header"
    )
    lines = table.splitlines()
    assert lines[0] == "header"
    assert "capture/cam-s1" in lines[2]
    assert " 2 " in lines[2]
    assert "2.0" in lines[2]
    assert lines[-1] == "not installed here (skipped): plate-ocr/prod"


def test_cameras_are_simulated_when_they_point_at_the_local_simulator(cfg: FacilityConfig) -> None:
    from services.supervisor.__main__ import simulated_cameras

    assert simulated_cameras(cfg)
    data = cfg.model_dump()
    data["cameras"][0]["source"] = "rtsp://192.0.2.10:554/stream1"
    assert not simulated_cameras(FacilityConfig.model_validate(data))


def test_up_refuses_clips_for_real_cameras(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from services.cli import cli

    repo = Path(__file__).resolve().parents[2]
    args = ["up", "--config", str(repo / "facility.yaml"), "--no-sim", "--from-clips",
            "--data-dir", str(tmp_path / "data")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "--from-clips serves the simulated cameras" in result.output
    assert not (tmp_path / "data").exists()  # refused before anything started
