"""``depotwatch eval``: accuracy and latency against the simulator's ground truth."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from schemas.facility import ConfigError, load_facility
from services.evaluation.compare import parse_time
from services.evaluation.detector_eval import detector_command
from services.evaluation.estimators import estimators_command
from services.evaluation.fusion_eval import fusion_command
from services.evaluation.pipeline import measure
from services.evaluation.suite import suite_command
from services.runtime.settings import load_settings
from services.runtime.topic_reader import TopicMissingError


@click.group("eval")
def evaluate() -> None:
    """Accuracy against simulator ground truth."""


@evaluate.command("pipeline")
@click.option("--flow", default="prod", show_default=True, help="Flow whose state to score.")
@click.option(
    "--duration",
    type=float,
    default=300.0,
    show_default=True,
    help="Live: seconds to watch the running pipeline.",
)
@click.option("--from", "start", default=None, help="Score a past range instead (ISO, -30m).")
@click.option("--to", "end", default=None, help="End of the range (default now).")
@click.option(
    "--warmup",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds after the first ground-truth tick not scored.",
)
def pipeline_command(
    flow: str, duration: float, start: str | None, end: str | None, warmup: float
) -> None:
    """End-to-end figures of a running pipeline (start it with `depotwatch up`).

    Prints count-per-track accuracy, head/tail error median and p95, identity accuracy and
    capture -> facility-state latency p50/p95, each against its goal.
    """

    settings = load_settings()
    try:
        facility = load_facility(settings.facility_config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    lengths = {t.id: t.length_m for t in facility.tracks}
    t0 = parse_time(start) if start else None
    t1 = (parse_time(end) if end else datetime.now(UTC)) if start else None
    if t0 is None:
        click.echo(f"watching facility-state.{flow}.v1 and ground-truth.v1 for {duration:.0f} s")
    try:
        figures = measure(settings.kafka, flow, duration, t0, t1, warmup, lengths)
    except TopicMissingError as exc:
        raise click.ClickException(f"{exc}; is `depotwatch up --flow {flow}` running?") from None
    for line in figures.lines():
        click.echo(line)


evaluate.add_command(detector_command)
evaluate.add_command(estimators_command)
evaluate.add_command(fusion_command)
evaluate.add_command(suite_command)
