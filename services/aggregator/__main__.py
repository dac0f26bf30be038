"""``depotwatch aggregator``: receive every camera's frames, store them, publish FrameRefs."""

from __future__ import annotations

import logging
from pathlib import Path

import click
from confluent_kafka import KafkaException

from schemas.facility import ConfigError
from schemas.frames import FrameRef
from schemas.topics import topics_for
from services.aggregator.config import AggregatorSettings
from services.aggregator.service import AggregatorService
from services.runtime.facility_watch import FacilityWatch
from services.runtime.kafka import KafkaUnavailableError, MessageProducer, TopicAdmin
from services.runtime.logs import configure_logging
from services.runtime.observability import Health, ObservabilityServer
from services.runtime.settings import Settings, load_settings
from services.runtime.shutdown import ShutdownSignal
from services.runtime.storage import ObjectStore

log = logging.getLogger("services.aggregator")


def watch_facility(path: Path) -> FacilityWatch:
    """The facility config, re-read on change (its enabled cameras are watched by /healthz)."""
    try:
        return FacilityWatch(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def run_aggregator(
    settings: Settings,
    agg: AggregatorSettings,
    shutdown: ShutdownSignal,
    facility: FacilityWatch | None,
) -> None:
    """Build the adapters, serve /metrics and /healthz, and run until shutdown."""

    store = ObjectStore(settings.s3)

    def new_producer() -> MessageProducer:
        return MessageProducer(
            settings.kafka,
            client_id="depotwatch-aggregator",
            overrides={"message.timeout.ms": int(agg.produce_timeout_s * 1000)},
        )

    service = AggregatorService(
        agg, store, new_producer(), shutdown, facility=facility, new_producer=new_producer
    )
    health = Health()
    # Silent cameras, an unreachable store or broker: reported (/healthz), not restarted
    # (/livez): a restart of the aggregator brings none of them back, and it buffers meanwhile.
    health.add("cameras", service.health_cameras, restart=False)
    health.add("object_store", service.health_store, restart=False)
    health.add("kafka", service.health_kafka, restart=False)
    server = ObservabilityServer(health, settings.http_host, settings.http_port).start()
    try:
        layout = settings.topics.layout()
        frames = [s for s in topics_for([], layout) if s.name == FrameRef.topic_name()]
        try:
            TopicAdmin(settings.kafka).ensure(frames, timeout=10)
        except (KafkaUnavailableError, KafkaException) as exc:
            # The producer keeps retrying on its own: a broker that is late is not fatal.
            log.warning("could not ensure topic frames.v1; continuing", extra={"error": str(exc)})
        service.prepare_bucket()
        log.info(
            "aggregator started",
            extra={
                "endpoint": service.endpoint,
                "bucket": store.bucket,
                "expected_cameras": len(service.activity.cameras()),
                "http": server.url,
            },
        )
        service.run()
    finally:
        service.producer.close(timeout=5)
        server.stop()
        log.info("aggregator stopped")


@click.command("aggregator")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Facility YAML whose enabled cameras /healthz expects (default: the configured one).",
)
@click.option(
    "--no-expect",
    is_flag=True,
    help="Do not expect the config's cameras; watch only cameras that have sent frames.",
)
@click.option("--bind", default=None, help="ZeroMQ endpoint to listen on (tcp://HOST:PORT).")
def aggregator_command(config_path: Path | None, no_expect: bool, bind: str | None) -> None:
    """Receive frames from every capture, store each JPEG in S3, then publish its FrameRef.

    New cameras are accepted as they connect. Serves /metrics and /healthz; stops cleanly on
    SIGTERM (stores what is buffered within DEPOTWATCH_AGGREGATOR__DRAIN_TIMEOUT_S).
    """
    settings = load_settings()
    configure_logging("aggregator", settings.log_level, settings.log_format)
    # During an S3 outage urllib3 would log every retry; the service logs the outage once.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    agg = load_settings(AggregatorSettings)
    if bind:
        agg = agg.model_copy(update={"bind": bind})
    facility: FacilityWatch | None
    if no_expect:
        facility = None
    elif config_path is None and not settings.facility_config.exists():
        facility = None  # no config at hand: watch the cameras that show up
    else:
        facility = watch_facility(config_path or settings.facility_config)
    shutdown = ShutdownSignal().install()
    try:
        run_aggregator(settings, agg, shutdown, facility)
    except OSError as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    aggregator_command()
