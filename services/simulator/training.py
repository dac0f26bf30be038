"""``depotwatch train``: train the head/tail/plate detector on a simulator dataset.

Ultralytics YOLO built from a model YAML (random init: no pretrained weights can be
downloaded), trained on CPU by default, with everything that would reach the network
switched off (``YOLO_OFFLINE``, no plots so no font download, no AMP check on CPU). Writes the
weights (optimizer stripped) and a model card with per-class metrics on the held-out test
split.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import yaml

from services.simulator.render import CLASSES


def _offline_ultralytics(config_dir: Path) -> Any:
    """Import ultralytics with network access disabled; returns the ``YOLO`` class."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir))
    config_dir.mkdir(parents=True, exist_ok=True)
    from ultralytics import YOLO, settings

    settings.update({k: False for k in ("sync", "wandb", "tensorboard", "mlflow") if k in settings})
    return YOLO


def evaluate(weights: Path, data: Path, imgsz: int, split: str, device: str) -> dict[str, Any]:
    """Per-class P, R, mAP50 and mAP50-95 of ``weights`` on a dataset split."""
    yolo = _offline_ultralytics(Path(".depotwatch/ultralytics"))
    model = yolo(str(weights))
    metrics = model.val(
        data=str(data),
        imgsz=imgsz,
        split=split,
        device=device,
        plots=False,
        verbose=False,
        batch=8,
        workers=0,
    )
    box = metrics.box
    per_class: dict[str, dict[str, float]] = {}
    for i, cls_index in enumerate(box.ap_class_index):
        p, r, ap50, ap = box.class_result(i)
        per_class[CLASSES[int(cls_index)]] = {
            "precision": round(float(p), 4),
            "recall": round(float(r), 4),
            "mAP50": round(float(ap50), 4),
            "mAP50-95": round(float(ap), 4),
        }
    return {
        "split": split,
        "per_class": per_class,
        "mAP50": round(float(box.map50), 4),
        "mAP50-95": round(float(box.map), 4),
        "images": len(_label_files(data, split)),
    }


def _label_files(data: Path, split: str) -> list[Path]:
    """YOLO label files of one split of a data YAML (``images/x`` -> ``labels/x``)."""
    spec = yaml.safe_load(data.read_text())
    root = Path(spec.get("path") or data.parent)
    images = Path(str(spec[split]))
    labels = root / Path(*["labels" if p == "images" else p for p in images.parts])
    return sorted(labels.glob("*.txt"))


def _split_counts(data: Path) -> dict[str, dict[str, int]]:
    """Images and boxes per class in each split, from the YOLO label files."""
    out: dict[str, dict[str, int]] = {}
    root = data.parent
    for split in ("train", "val", "test"):
        labels = root / "labels" / split
        if not labels.is_dir():
            continue
        counts = {"images": 0, **{c: 0 for c in CLASSES}}
        for f in labels.glob("*.txt"):
            counts["images"] += 1
            for line in f.read_text().splitlines():
                if line.strip():
                    counts[CLASSES[int(line.split()[0])]] += 1
        out[split] = counts
    return out


def model_card(
    *,
    weights: Path,
    arch: str,
    data: Path,
    epochs: int,
    imgsz: int,
    batch: int,
    train_seconds: float,
    device: str,
    test: dict[str, Any],
    counts: dict[str, dict[str, int]],
) -> str:
    """The MODEL_CARD.md text."""
    rows = "\n".join(
        f"| {c} | {m['precision']:.3f} | {m['recall']:.3f} | {m['mAP50']:.3f} | "
        f"{m['mAP50-95']:.3f} |"
        for c, m in test["per_class"].items()
    )
    split_rows = "\n".join(
        f"| {s} | {c['images']} | {c['head']} | {c['tail']} | {c['plate']} |"
        for s, c in counts.items()
    )
    goal = all(m["mAP50"] >= 0.90 for m in test["per_class"].values()) and len(
        test["per_class"]
    ) == len(CLASSES)
    size_mb = weights.stat().st_size / 1e6
    class_list = ", ".join(f"{i} {c}" for i, c in enumerate(CLASSES))
    return f"""# depot-yolo: head / tail / plate detector

Weights: `{weights}` ({size_mb:.1f} MB), ultralytics YOLO built from `{arch}` (random
initialisation; no pretrained weights). Classes: {class_list}.
Trained {datetime.now(UTC):%Y-%m-%d} with `depotwatch train` on {device}.

## Data
Simulator frames (`depotwatch sim dataset`), 1280x720 JPEG, all 8 cameras of facility.yaml.
Train, val and test come from different scenario files and disjoint seed ranges (train
1000+, val 5000+, test 9000+), so test locomotives, plates, placements, lighting and noise are
unseen. Label convention: see `services/simulator/render.py` (head/tail = image box of the
last 0.6 m x full width x 0-1.4 m of the body at that end; plate = visible number panel).

| split | images | head | tail | plate |
|---|---|---|---|---|
{split_rows}

## Training
epochs {epochs}, imgsz {imgsz}, batch {batch}, {device}, wall time {train_seconds / 60:.1f} min.
Use the same `imgsz` at inference (flows' `position_estimator.imgsz`).

## Measured on the held-out test split ({test["images"]} images)
| class | precision | recall | mAP50 | mAP50-95 |
|---|---|---|---|---|
{rows}
| all | | | {test["mAP50"]:.3f} | {test["mAP50-95"]:.3f} |

Goal mAP50 >= 0.90 for head, tail and plate: {"met" if goal else "NOT met"}.

## Limits
Synthetic depot only: flat-shaded box locomotives, one floor, no people or clutter. Expect a
domain gap on real video; retrain or fine-tune on labelled real frames before relying on it.
"""


class TrainingError(RuntimeError):
    """Training produced no weights."""


@dataclass(frozen=True)
class TrainReport:
    """What :func:`train_detector` did."""

    seconds: float
    test: dict[str, Any]
    card: str


def train_detector(
    data: Path,
    epochs: int,
    imgsz: int,
    batch: int,
    device: str,
    out: Path,
    runs_dir: Path,
    arch: str = "yolov8n.yaml",
    warmup_epochs: float = 0.5,
    workers: int = 2,
    cache: bool = True,
    time_hours: float | None = None,
    threads: int = 2,
    on_epoch: Callable[[int, int], None] | None = None,
    on_checkpoint: Callable[[int, Path], None] | None = None,
    resume_from: Path | None = None,
) -> TrainReport:
    """Train the detector on ``data``; write ``out`` and MODEL_CARD.md beside it.

    ``on_epoch(done, total)`` is called after every epoch; an exception it raises stops the
    training (a cancelled job). ``on_checkpoint(epoch, last_pt)`` is called when Ultralytics
    has saved ``last.pt`` after an epoch; ``resume_from`` (such a ``last.pt``, possibly from
    another machine) continues that training at its next epoch instead of starting over.
    """
    yolo = _offline_ultralytics(Path(".depotwatch/ultralytics"))
    import ultralytics.utils.torch_utils as torch_utils

    # Ultralytics pins CPU training to cpu_count - 1 threads (1 on a 2-core machine).
    torch_utils.NUM_THREADS = threads
    model = yolo(str(resume_from) if resume_from is not None else arch)
    if on_epoch is not None:
        model.add_callback(
            "on_train_epoch_end", lambda trainer: on_epoch(trainer.epoch + 1, trainer.epochs)
        )
    if on_checkpoint is not None:
        model.add_callback(
            "on_model_save", lambda trainer: on_checkpoint(trainer.epoch + 1, Path(trainer.last))
        )
    started = time.monotonic()
    kwargs: dict[str, Any] = {
        "data": str(data.resolve()),
        "epochs": epochs,
        "imgsz": imgsz,
        "batch": batch,
        "device": device,
        "workers": workers,
        "cache": "ram" if cache else False,
        "project": str(runs_dir.resolve()),
        "name": "depot-yolo",
        "exist_ok": True,
        "plots": False,
        "amp": False,
        "pretrained": False,
        "seed": 0,
        "deterministic": False,
        "patience": 1000,
        # Short CPU budgets: step the optimizer every batch (ultralytics otherwise accumulates
        # to 64 images) and keep warm-up short, or most of a few epochs is spent warming up.
        "nbs": batch,
        "warmup_epochs": warmup_epochs,
        "scale": 0.3,
        # Synthetic frames: no vertical flips (the floor is always below); mild colour jitter
        # stands in for real cameras' white balance.
        "fliplr": 0.5,
        "flipud": 0.0,
        "close_mosaic": 3 if time_hours else max(1, epochs // 5),
    }
    if time_hours:
        kwargs["time"] = time_hours
    if resume_from is not None:
        # The checkpoint carries the run's arguments; its dataset and run folder were on the
        # machine that wrote it, so both are given again.
        kwargs = {
            "resume": str(resume_from),
            "data": kwargs["data"],
            "save_dir": str((runs_dir / "depot-yolo").resolve()),
            "device": device,
            "workers": workers,
        }
    model.train(**kwargs)
    seconds = time.monotonic() - started
    best = runs_dir / "depot-yolo" / "weights" / "best.pt"
    if not best.exists():
        raise TrainingError(f"training wrote no {best}; see the log above")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best, out)
    test = evaluate(out, data, imgsz, "test", device)
    card = model_card(
        weights=out,
        arch=arch,
        data=data,
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        train_seconds=seconds,
        device=device,
        test=test,
        counts=_split_counts(data),
    )
    (out.parent / "MODEL_CARD.md").write_text(card)
    return TrainReport(seconds, test, card)


@click.command("train")
@click.option(
    "--data",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    required=True,
    help="data.yaml written by `depotwatch sim dataset`.",
)
@click.option("--arch", default="yolov8n.yaml", show_default=True, help="Model YAML (no weights).")
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(1, 1000))
@click.option("--imgsz", default=640, show_default=True, type=click.IntRange(64, 2048))
@click.option("--batch", default=16, show_default=True, type=click.IntRange(1, 512))
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    envvar="DEPOTWATCH_TRAIN_DEVICE",
    help="Torch device: cpu, 0, cuda:0 ... (env DEPOTWATCH_TRAIN_DEVICE).",
)
@click.option(
    "--warmup-epochs",
    type=click.FloatRange(0, 10),
    default=0.5,
    show_default=True,
    help="Learning-rate warm-up, epochs.",
)
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0, 64))
@click.option("--cache/--no-cache", default=True, show_default=True, help="Cache images in RAM.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("models/depot-yolo.pt"),
    show_default=True,
    help="Where to write the trained weights.",
)
@click.option(
    "--runs-dir",
    type=click.Path(path_type=Path),
    default=Path(".depotwatch/runs"),
    show_default=True,
    help="Ultralytics run directory (checkpoints, results.csv).",
)
@click.option(
    "--time-hours",
    type=float,
    default=None,
    help="Train for this long instead of --epochs (the LR schedule is fitted to it).",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 256),
    default=os.cpu_count() or 1,
    show_default=True,
    help="Torch CPU threads (torch defaults to 1 on some machines).",
)
def train_command(
    data: Path,
    arch: str,
    epochs: int,
    imgsz: int,
    batch: int,
    device: str,
    warmup_epochs: float,
    workers: int,
    cache: bool,
    out: Path,
    runs_dir: Path,
    time_hours: float | None,
    threads: int,
) -> None:
    """Train the detector on DATA, write OUT and MODEL_CARD.md beside it (test-split metrics)."""
    spec = yaml.safe_load(data.read_text())
    if not isinstance(spec, dict) or "test" not in spec:
        raise click.ClickException(
            f"{data}: no 'test' split; write the dataset with `depotwatch sim dataset --out DIR`"
        )
    try:
        report = train_detector(
            data,
            epochs,
            imgsz,
            batch,
            device,
            out,
            runs_dir,
            arch=arch,
            warmup_epochs=warmup_epochs,
            workers=workers,
            cache=cache,
            time_hours=time_hours,
            threads=threads,
        )
    except TrainingError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) after {report.seconds / 60:.1f} min"
    )
    card_path = out.parent / "MODEL_CARD.md"
    click.echo(f"wrote {card_path}")
    for cls, m in report.test["per_class"].items():
        click.echo(f"test {cls:6} mAP50 {m['mAP50']:.3f} mAP50-95 {m['mAP50-95']:.3f}")
    sys.stdout.flush()
