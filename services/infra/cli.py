"""``depotwatch infra up|down|status|init``: the embedded Kafka + S3 + Redis of one machine."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from schemas.facility import ConfigError, load_facility
from services.infra.embedded import EmbeddedInfra, initialise
from services.infra.processes import InfraError
from services.runtime.kafka import KafkaUnavailableError
from services.runtime.settings import load_settings
from services.runtime.storage import StorageError

T = TypeVar("T")

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=Path("facility.yaml"),
    show_default=True,
    help="Facility config; its flows decide which topics are created.",
)


def _flows(config_path: Path) -> list[str]:
    try:
        cfg = load_facility(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"{exc.source}: {problem}", err=True)
        raise click.ClickException(
            f"{config_path} is not valid; fix it (`depotwatch config check {config_path}`)"
        ) from None
    return list(cfg.flows)


def _run(action: Callable[[], T]) -> T:
    # Every failure the user can fix arrives as one of these, with a one-line message.
    try:
        return action()
    except (InfraError, KafkaUnavailableError, StorageError) as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def infra() -> None:
    """Start, stop and inspect the embedded Kafka-protocol broker (Tansu), S3 (SeaweedFS) and
    Redis (the job engine).

    Ports, data directory and binaries come from DEPOTWATCH_INFRA__* settings; credentials
    from DEPOTWATCH_S3__ACCESS_KEY / SECRET_KEY.
    """


@infra.command("up")
@config_option
def up_command(config_path: Path) -> None:
    """Start S3, the broker and Redis (reusing running ones), then create the bucket and topics."""
    settings = load_settings()
    stack = EmbeddedInfra(settings, _flows(config_path), progress=click.echo)
    _run(stack.up)
    click.echo(
        f"ready: DEPOTWATCH_KAFKA__BOOTSTRAP_SERVERS={stack.kafka_address} "
        f"DEPOTWATCH_S3__ENDPOINT={stack.s3_address} "
        f"DEPOTWATCH_JOBS__REDIS_URL={stack.redis_url} (data in {stack.data_dir})"
    )


@infra.command("down")
def down_command() -> None:
    """Stop Redis, the broker, then S3 (SeaweedFS takes a few seconds to stop)."""
    stack = EmbeddedInfra(load_settings(), progress=click.echo)
    for line in _run(stack.down):
        click.echo(line)


@infra.command("status")
def status_command() -> None:
    """Print each component's pid, port and whether it answers; exit 1 unless all answer."""
    stack = EmbeddedInfra(load_settings())
    status = _run(stack.status)
    for c in status.components:
        state = "answering" if c.answering else "NOT answering"
        pid = f"pid {c.pid}" if c.pid else "no process"
        click.echo(f"{c.label:14} {pid:12} port {c.port:<6} {state}: {c.detail}")
    click.echo(f"topics: {status.topics if status.topics is not None else 'unknown'}")
    sys.exit(0 if status.healthy else 1)


@infra.command("init")
@config_option
def init_command(config_path: Path) -> None:
    """Only create the bucket and topics, on whatever Kafka and S3 the settings point to.

    For external infrastructure (Apache Kafka, MinIO): nothing is started.
    """
    settings = load_settings()
    flows = _flows(config_path)
    click.echo(
        f"initialising Kafka {settings.kafka.bootstrap_servers} and S3 {settings.s3.endpoint}"
    )
    _run(lambda: initialise(settings, flows, progress=click.echo))
