"""YOLO-format detector dataset from simulator scenarios (train/val/test from disjoint seeds).

Each split uses its own scenario files (``split:`` in the YAML) and its own seed range, so the
test split shows locomotives, plates, placements and lighting the model never trained on.
Images are stored as JPEG at the camera's ``jpeg_quality``, as the pipeline stores frames.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from schemas.facility import FacilityConfig
from services.simulator.render import CLASSES, ObjectLabel, Renderer
from services.simulator.world import Simulation, builtin_scenarios, load_scenario, stable_seed

SPLIT_SEEDS = {"train": 1000, "val": 5000, "test": 9000}
"""First seed of each split; a split uses seeds base, base+1, ... (disjoint ranges)."""


@dataclass(frozen=True)
class SplitPlan:
    """How many simulations and frames one split gets."""

    name: str
    scenarios: tuple[str, ...]
    seeds_per_scenario: int
    ticks_per_seed: int


def default_plan(scale: float = 1.0) -> list[SplitPlan]:
    """The shipped split layout; ``scale`` multiplies the number of seeds."""
    names = builtin_scenarios()
    out = []
    for split, seeds in (("train", 12), ("val", 4), ("test", 6)):
        scenarios = tuple(n for n in names if load_scenario(n).split == split)
        out.append(SplitPlan(split, scenarios, max(1, round(seeds * scale)), 4))
    return out


def yolo_line(label: ObjectLabel, width: int, height: int) -> str:
    """``class cx cy w h`` normalised to the image size."""
    x0, y0, x1, y1 = label.box
    cls = CLASSES.index(label.cls)
    return (
        f"{cls} {(x0 + x1) / 2 / width:.6f} {(y0 + y1) / 2 / height:.6f} "
        f"{(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}"
    )


def write_dataset(
    facility: FacilityConfig,
    out: Path,
    plans: list[SplitPlan],
    progress: Callable[[str], None] | None = None,
    keep_empty: float = 0.15,
) -> dict[str, Counter[str]]:
    """Render every split to ``out`` (images/, labels/, labels.jsonl, data.yaml); returns counts.

    Frames without any label are kept with probability ``keep_empty`` (background examples).
    """
    renderer = Renderer(facility)
    counts: dict[str, Counter[str]] = {}
    for plan in plans:
        img_dir = out / "images" / plan.name
        lbl_dir = out / "labels" / plan.name
        img_dir.mkdir(parents=True, exist_ok=True)
        lbl_dir.mkdir(parents=True, exist_ok=True)
        count: Counter[str] = Counter()
        base = SPLIT_SEEDS[plan.name]
        with (out / f"{plan.name}.jsonl").open("w") as meta:
            for s_index, scenario_name in enumerate(plan.scenarios):
                scenario = load_scenario(scenario_name)
                for k in range(plan.seeds_per_scenario):
                    seed = base + s_index * 100 + k
                    sim = Simulation(facility, scenario, seed)
                    rng = np.random.default_rng(stable_seed("ticks", scenario_name, seed))
                    ticks = sorted(rng.choice(sim.ticks, plan.ticks_per_seed, replace=False))
                    for tick in ticks:
                        state = sim.state(int(tick))
                        for cam_id in renderer.views:
                            frame = renderer.render(state, cam_id)
                            if not frame.labels and rng.random() > keep_empty:
                                continue
                            cam = facility.camera(cam_id)
                            stem = f"{scenario_name}_{seed}_{int(tick):05d}_{cam_id}"
                            cv2.imwrite(
                                str(img_dir / f"{stem}.jpg"),
                                frame.image,
                                [cv2.IMWRITE_JPEG_QUALITY, cam.jpeg_quality],
                            )
                            lines = [yolo_line(lb, cam.width, cam.height) for lb in frame.labels]
                            (lbl_dir / f"{stem}.txt").write_text("".join(f"{x}\n" for x in lines))
                            meta.write(
                                json.dumps(
                                    {
                                        "image": f"images/{plan.name}/{stem}.jpg",
                                        "scenario": scenario_name,
                                        "seed": seed,
                                        "tick": int(tick),
                                        "camera_id": cam_id,
                                        "labels": [lb.as_dict() for lb in frame.labels],
                                    }
                                )
                                + "\n"
                            )
                            count["images"] += 1
                            count.update(lb.cls for lb in frame.labels)
                    if progress:
                        progress(f"{plan.name}: {scenario_name} seed {seed}: {dict(count)}")
        counts[plan.name] = count
    write_data_yaml(out / "data.yaml", out, "depotwatch simulator dataset")
    return counts


def write_data_yaml(
    path: Path, root: Path, comment: str, splits: tuple[str, str, str] = ("train", "val", "test")
) -> Path:
    """Write an ultralytics data YAML for ``root``: ``images/<split>`` for train, val, test."""
    train, val, test = splits
    path.write_text(
        f"# {comment}\npath: {root.resolve()}\n"
        f"train: images/{train}\nval: images/{val}\ntest: images/{test}\n"
        "names:\n" + "".join(f"  {i}: {n}\n" for i, n in enumerate(CLASSES))
    )
    return path
