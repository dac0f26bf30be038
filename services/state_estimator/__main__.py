"""``depotwatch state-estimator --flow NAME``: run the flow's Faust state estimator."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import click

from schemas.facility import ConfigError, load_facility
from services.runtime.consumer_lag import ConsumerLagMonitor
from services.runtime.kafka import KafkaUnavailableError, TopicAdmin
from services.runtime.logs import configure_logging
from services.runtime.observability import (
    Health,
    ObservabilityServer,
    ProgressWatch,
    behind_check,
)
from services.runtime.settings import load_settings
from services.state_estimator.app import StateEstimatorApp
from services.state_estimator.config import StateEstimatorServiceSettings

log = logging.getLogger(__name__)


@click.command("state-estimator")
@click.option("--flow", default="prod", show_default=True, help="Flow to run (facility config).")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Facility YAML (default: DEPOTWATCH_FACILITY_CONFIG or facility.yaml).",
)
def state_estimator_command(flow: str, config_path: Path | None) -> None:
    """Fuse a flow's position and identity estimates into facility-state.<flow>.v1."""
    settings = load_settings()
    configure_logging(f"state-estimator/{flow}", settings.log_level, settings.log_format)
    path = Path(config_path or settings.facility_config)
    try:
        facility = load_facility(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        estimator = StateEstimatorApp(
            facility, flow, settings, load_settings(StateEstimatorServiceSettings), config_path=path
        )
    except (KeyError, ValueError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from None
    admin = TopicAdmin(settings.kafka)
    try:
        admin.wait_until_ready(estimator.service.topic_timeout_s)
        # Faust raises PartitionsMismatch on topics it would create with other counts, and
        # aiokafka's auto-creation is not reliable on every broker: create them all up front.
        admin.ensure(estimator.topic_specs())
    except KafkaUnavailableError as exc:
        raise click.ClickException(str(exc)) from None

    lag = ConsumerLagMonitor.of_group(settings.kafka, estimator.app_id).start()
    health = Health()
    health.add("faust", lambda: (estimator.ready, "running" if estimator.ready else "starting"))
    health.add("output", estimator.output_health)
    progress = ProgressWatch(
        lambda: estimator.estimates_done,
        lag.backlog,
        stall_after_s=estimator.service.stall_after_s,
        unreachable_after_s=estimator.service.stall_after_s,
    )

    # A standby worker (another one owns the fusion partition) fuses nothing while the group's
    # estimates wait: that is not a stall.
    def progress_check() -> tuple[bool, str]:
        ok, detail = progress.check()  # always, so that its clock stays current
        return (ok, detail) if estimator.owns_fusion else (True, f"standby ({detail})")

    health.add("progress", progress_check)
    # Behind but making progress: true to report, but a restart only adds a restore to the
    # backlog (the 60-minute soak: a slow worker restarted 7 times, each restart worse).
    health.add(
        "behind",
        lambda: behind_check(
            estimator.newest_captured,
            lag.backlog(),
            datetime.now(UTC),
            estimator.service.behind_after_s,
        ),
        restart=False,
    )
    server = ObservabilityServer(health, settings.http_host, settings.http_port).start()
    log.info("metrics", extra={"flow": flow, "url": server.url})
    import faust

    worker = faust.Worker(
        estimator.app,
        loglevel=settings.log_level.upper(),
        quiet=True,
        redirect_stdouts=False,
    )
    try:
        worker.execute_from_commandline()
    finally:
        server.stop()
        lag.stop()


if __name__ == "__main__":
    state_estimator_command()
