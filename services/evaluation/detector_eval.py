"""``depotwatch eval detector``: mAP of the detector weights on the held-out test split.

Renders the simulator's test split (its own scenarios and seeds 9000+, never trained on) unless
an existing dataset is given, and runs ultralytics' validator on it. The figures are the ones
the model card quotes; this command reproduces them on any machine.
"""

from __future__ import annotations

from pathlib import Path

import click

from services.simulator.render import CLASSES

MAP50_GOAL = 0.90
"""Issue goal: mAP50 of head, tail and plate on the test split."""


def test_split_yaml(dataset: Path) -> Path:
    """A data YAML whose every split is the test split of ``dataset`` (for validation only)."""
    images = dataset / "images" / "test"
    if not images.is_dir():
        raise click.ClickException(
            f"{dataset} has no images/test; write it with `depotwatch sim dataset --out {dataset}`"
        )
    from services.simulator.dataset import write_data_yaml

    return write_data_yaml(
        dataset / "test-only.yaml",
        dataset,
        f"the test split of {dataset.resolve()}, for `depotwatch eval detector`",
        ("test", "test", "test"),
    )


@click.command("detector")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=Path("facility.yaml"),
    show_default=True,
)
@click.option("--flow", default="prod", show_default=True, help="Flow whose weights to score.")
@click.option("--weights", type=click.Path(path_type=Path), default=None, help="Override weights.")
@click.option(
    "--imgsz",
    type=click.IntRange(64, 2048),
    default=None,
    help="Input size (default: the size the weights were trained at).",
)
@click.option(
    "--dataset",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path(".depotwatch/datasets/test-split"),
    show_default=True,
    help="Dataset directory; its test split is rendered here first when missing.",
)
@click.option(
    "--scale",
    type=click.FloatRange(0.05, 100),
    default=1.0,
    show_default=True,
    help="Seeds per test scenario, as a multiple of the shipped split (when rendering).",
)
@click.option("--device", default="cpu", show_default=True, help="Torch device (cpu, 0, ...).")
def detector_command(
    config_path: Path,
    flow: str,
    weights: Path | None,
    imgsz: int | None,
    dataset: Path,
    scale: float,
    device: str,
) -> None:
    """Per-class precision, recall, mAP50 and mAP50-95 on the held-out test split.

    Goal: mAP50 >= 0.90 for head, tail and plate. Exits 1 when it is missed.
    """
    from schemas.facility import ConfigError, load_facility
    from services.position_estimator.config import position_estimator_config
    from services.position_estimator.detector import WeightsError, YoloDetector
    from services.runtime.estimator_service import EstimatorConfigError
    from services.runtime.settings import load_settings
    from services.simulator.dataset import default_plan, write_dataset
    from services.simulator.training import evaluate

    try:
        facility = load_facility(config_path)
        pos = position_estimator_config(
            facility, config_path, flow, load_settings(), weights=weights
        )
        size = imgsz or YoloDetector(pos.weights).trained_imgsz or pos.imgsz
    except (ConfigError, EstimatorConfigError, WeightsError) as exc:
        raise click.ClickException(str(exc)) from None
    if not (dataset / "images" / "test").is_dir():
        click.echo(f"rendering the test split into {dataset}", err=True)
        (test_plan,) = [p for p in default_plan(scale) if p.name == "test"]
        write_dataset(facility, dataset, [test_plan], progress=lambda s: click.echo(s, err=True))
    result = evaluate(pos.weights, test_split_yaml(dataset), size, "test", device)
    click.echo(f"{pos.weights} imgsz {size} on {result['images']} held-out test images")
    click.echo(f"{'class':6} {'precision':>9} {'recall':>7} {'mAP50':>6} {'mAP50-95':>8}")
    missed = []
    for cls in CLASSES:
        m = result["per_class"].get(cls)
        if m is None:
            missed.append(cls)
            click.echo(f"{cls:6} not in the test split or never detected")
            continue
        ok = m["mAP50"] >= MAP50_GOAL
        if not ok:
            missed.append(cls)
        click.echo(
            f"{cls:6} {m['precision']:9.3f} {m['recall']:7.3f} {m['mAP50']:6.3f} "
            f"{m['mAP50-95']:8.3f}  goal mAP50 >= {MAP50_GOAL}: {'ok' if ok else 'MISSED'}"
        )
    click.echo(f"all    {'':9} {'':7} {result['mAP50']:6.3f} {result['mAP50-95']:8.3f}")
    if missed:
        raise SystemExit(1)
