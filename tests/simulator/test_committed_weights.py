"""The committed detector weights find heads and tails on freshly rendered frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from schemas.facility import FacilityConfig
from services.simulator.render import CLASSES, ObjectLabel, Renderer
from services.simulator.world import Simulation
from tests.simulator.scenes import REPO, scenario

WEIGHTS = REPO / "models" / "depot-yolo.pt"


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@pytest.mark.slow
def test_committed_weights_detect_head_and_tail(
    facility: FacilityConfig, renderer: Renderer, tmp_path: Path
) -> None:
    if not WEIGHTS.exists():
        pytest.skip(f"{WEIGHTS} is absent; train it with `depotwatch train`")
    import os

    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(tmp_path))
    from ultralytics import YOLO

    # A scene no dataset contains: a TE33A's head at 15.5 m and a ChME3's tail at 21 m on T1,
    # both in cam-s2's view.
    sc = scenario(
        locomotives=[
            {
                "id": "A",
                "model": "TE33A",
                "number": 4711,
                "track": "T1",
                "keyframes": [{"at_s": 0, "head_m": 15.5}],
            },
            {
                "id": "B",
                "model": "ChME3",
                "number": 815,
                "track": "T1",
                "keyframes": [{"at_s": 0, "head_m": 21.0 + 17.22}],
            },
        ],
        lighting=[{"at_s": 0, "level": 0.9}],
        noise_sigma=2.5,
    )
    frame = renderer.render(Simulation(facility, sc, seed=424242).state(0), "cam-s2")
    wanted: list[ObjectLabel] = [lb for lb in frame.labels if lb.cls in ("head", "tail")]
    assert {lb.cls for lb in wanted} == {"head", "tail"}

    model = YOLO(str(WEIGHTS))
    imgsz = int(model.ckpt.get("train_args", {}).get("imgsz", 640))  # infer as trained
    result = model.predict(frame.image, imgsz=imgsz, conf=0.25, device="cpu", verbose=False)[0]
    boxes = result.boxes.xyxy.cpu().numpy()
    classes = [CLASSES[int(c)] for c in result.boxes.cls.cpu().numpy()]
    for label in wanted:
        ious = [
            _iou(label.box, tuple(np.asarray(b, float)))
            for b, c in zip(boxes, classes, strict=True)
            if c == label.cls
        ]
        assert ious, f"no {label.cls} detected at all"
        assert max(ious) > 0.5, f"{label.cls} of {label.locomotive_id} not found: {ious}"
