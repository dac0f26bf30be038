"""Frame source (no GStreamer): fps per camera, outages, scene cache, video files, dataset."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from click.testing import CliRunner

from schemas.facility import FacilityConfig
from services.simulator.dataset import SplitPlan, write_dataset
from services.simulator.frames import FrameSource
from services.simulator.render import Renderer
from tests.simulator.scenes import scenario

MOVING = [
    {
        "id": "M1",
        "model": "ChME3",
        "track": "T1",
        "keyframes": [{"at_s": 0, "head_m": 14}, {"at_s": 2, "head_m": 16}],
    },
]


def test_outage_and_fps(facility: FacilityConfig, renderer: Renderer) -> None:
    sc = scenario(
        duration_s=3,
        locomotives=MOVING,
        outages=[{"camera": "cam-s2", "from_s": 1.0, "to_s": 2.0}],
    )
    source = FrameSource(facility, sc, seed=1, cameras=["cam-s1", "cam-s2"], renderer=renderer)
    assert source.tick_s == 0.5  # 2 fps cameras
    seen = {tick.state.tick: sorted(tick.frames) for tick in source}
    assert seen[0] == ["cam-s1", "cam-s2"]
    assert seen[2] == ["cam-s1"]  # 1.0 s: cam-s2 is down
    assert seen[3] == ["cam-s1"]
    assert seen[4] == ["cam-s1", "cam-s2"]  # 2.0 s: back
    assert source.tick(2).ground_truth.cameras_down == ["cam-s2"]


def test_scene_cache_gives_the_same_frames_as_a_full_render(
    facility: FacilityConfig, renderer: Renderer
) -> None:
    sc = scenario(duration_s=4, locomotives=MOVING, noise_sigma=3.0)
    source = FrameSource(facility, sc, seed=1, cameras=["cam-s2"], renderer=renderer)
    for tick in source:  # moving for 2 s, then parked: later ticks reuse the clean image
        full = renderer.render(tick.state, "cam-s2")
        cached = tick.frames["cam-s2"]
        assert np.array_equal(full.image, cached.image)
        assert full.labels == cached.labels


def test_render_command_writes_videos_and_labels(tmp_path: Path) -> None:
    from services.simulator.cli import sim

    result = CliRunner().invoke(
        sim,
        ["render", "--out", str(tmp_path), "--cameras", "cam-s1", "--max-ticks", "4"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    cap = cv2.VideoCapture(str(tmp_path / "cam-s1.mp4"))
    frames = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (720, 1280, 3)
        frames += 1
    assert frames == 4
    records = [json.loads(x) for x in (tmp_path / "cam-s1.labels.jsonl").read_text().splitlines()]
    assert [r["tick"] for r in records] == [0, 1, 2, 3]
    truth = (tmp_path / "ground_truth.jsonl").read_text().splitlines()
    assert len(truth) == 4
    assert json.loads(truth[0])["scenario"] == "depot-day"


def test_dataset_is_yolo_format(facility: FacilityConfig, tmp_path: Path) -> None:
    plans = [
        SplitPlan("train", ("train-busy",), 1, 1),
        SplitPlan("test", ("test-busy",), 1, 1),
    ]
    counts = write_dataset(facility, tmp_path, plans, keep_empty=1.0)
    assert counts["train"]["images"] == 8  # one tick, every camera
    data = (tmp_path / "data.yaml").read_text()
    assert "names:\n  0: head\n  1: tail\n  2: plate\n" in data
    label_files = list((tmp_path / "labels" / "train").glob("*.txt"))
    assert len(label_files) == 8
    boxes = [line.split() for f in label_files for line in f.read_text().splitlines()]
    assert boxes, "a busy scenario shows some head, tail or plate"
    for cls, *xywh in boxes:
        assert cls in {"0", "1", "2"}
        assert all(0.0 <= float(v) <= 1.0 for v in xywh)
    test_stems = {p.stem for p in (tmp_path / "images" / "test").glob("*.jpg")}
    assert all("_90" in s for s in test_stems)  # test seeds come from their own range (9000+)
