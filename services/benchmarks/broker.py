"""Embedded broker reads against partition size, and what the log cleaner gives back.

On an embedded stack (SeaweedFS + Tansu on free ports, a temporary data directory): for each
``--batches`` N, a fresh one-partition topic gets N records of 600 bytes, one batch each (as
a live producer with little traffic sends them; the state estimator's internal topic is such a
partition). Then, side by side on the same partition:

- a plain aiokafka consumer reads ``--read`` records from the start and from the end;
- a consumer group commits the offset ``--read`` before the end, the log cleaner purges what it
  has committed (as it does for the state estimators' internal topics under ``depotwatch up``),
  and the last ``--read`` records are read again.

Tansu lists every batch object of a partition on each fetch, so reads slow down as a partition
grows; after the cleaner the partition holds only what is left to read.
"""

from __future__ import annotations

import asyncio
import gc
import shutil
import tempfile
import time
from pathlib import Path

import click

RECORD = b"x" * 600


async def _produce(address: str, topic: str, n: int) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=address)
    await producer.start()
    try:
        for _ in range(n):
            await producer.send_and_wait(topic, RECORD, partition=0)
    finally:
        await producer.stop()


async def _read_rate(address: str, topic: str, start: int, n: int, timeout_s: float) -> float:
    """Records per second reading ``n`` records of partition 0 from ``start``; a read that
    gets fewer within ``timeout_s`` is an error, not a slow figure."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=address, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, start)
        began = time.monotonic()
        got = 0
        while got < n and time.monotonic() - began < timeout_s:
            batch = await consumer.getmany(timeout_ms=1000)
            got += sum(len(records) for records in batch.values())
        if got < n:
            raise click.ClickException(
                f"read {got} of {n} records of {topic} from offset {start} in {timeout_s:.0f} s;"
                " raise --timeout-s or look at the broker's log"
            )
        return got / (time.monotonic() - began)
    finally:
        await consumer.stop()


@click.command("broker")
@click.option(
    "--batches",
    default="2000,20000",
    show_default=True,
    help="Partition sizes to measure (batch objects), comma-separated.",
)
@click.option("--read", "read_n", type=int, default=2000, show_default=True, help="Records read.")
@click.option("--timeout-s", type=float, default=300.0, show_default=True, help="Per read.")
def bench_command(batches: str, read_n: int, timeout_s: float) -> None:
    """Embedded broker read rate against partition size, before and after the log cleaner."""
    from confluent_kafka import Consumer, TopicPartition

    from schemas.base import Message
    from schemas.topics import TopicSpec
    from services.infra import EmbeddedInfra, settings_on_free_ports
    from services.infra.log_cleaner import BrokerLogCleaner, Rule, broker_store
    from services.runtime.kafka import TopicAdmin

    try:
        sizes = [int(b) for b in batches.split(",") if b.strip()]
    except ValueError:
        raise click.BadParameter(
            "give sizes as numbers, e.g. 2000,20000", param_hint="--batches"
        ) from None
    if not sizes or min(sizes) <= read_n:
        raise click.BadParameter(
            f"every size must be above --read ({read_n})", param_hint="--batches"
        )
    work = Path(tempfile.mkdtemp(prefix="depotwatch-bench-broker-"))
    stack = EmbeddedInfra(settings_on_free_ports(work / "infra"), flows=())
    click.echo(f"embedded broker and S3 in {work} ...")
    rows = []
    admin: TopicAdmin | None = None
    try:
        stack.up()
        settings = stack.client_settings
        admin = TopicAdmin(settings.kafka)
        store = broker_store(settings)
        for n in sizes:
            topic, group = f"bench-broker-{n}", f"bench-broker-{n}-group"
            admin.ensure([TopicSpec(topic, Message, 1, {"cleanup.policy": "delete"})])
            began = time.monotonic()
            asyncio.run(_produce(stack.kafka_address, topic, n))
            produced = n / (time.monotonic() - began)
            first = asyncio.run(_read_rate(stack.kafka_address, topic, 0, read_n, timeout_s))
            last = asyncio.run(
                _read_rate(stack.kafka_address, topic, n - read_n, read_n, timeout_s)
            )
            consumer = Consumer({**settings.kafka.client_config(), "group.id": group})
            consumer.commit(offsets=[TopicPartition(topic, 0, n - read_n)], asynchronous=False)
            consumer.close()
            cleaner = BrokerLogCleaner(store, {topic: Rule(consumed_by=group)}, admin.committed)
            cleaned = cleaner.clean()
            after = asyncio.run(
                _read_rate(stack.kafka_address, topic, n - read_n, read_n, timeout_s)
            )
            rows.append((n, produced, first, last, cleaned.deleted.get(topic, 0), after))
            click.echo(
                f"{n:>7} batches: produce {produced:6.0f}/s, read from start {first:6.0f}/s, "
                f"from end {last:6.0f}/s; cleaner deleted {cleaned.deleted.get(topic, 0)}, "
                f"then from end {after:6.0f}/s"
            )
    finally:
        # librdkafka's admin client has no close: drop it before its broker goes, or it
        # reports the lost connection over the figures.
        admin = cleaner = None  # type: ignore[assignment]
        gc.collect()
        stack.down()
        shutil.rmtree(work, ignore_errors=True)
    click.echo("")
    click.echo(
        f"{'batches':>8} {'produce/s':>10} {'read start/s':>13} {'read end/s':>11} "
        f"{'deleted':>8} {'after clean/s':>14}"
    )
    for n, produced, first, last, deleted, after in rows:
        click.echo(
            f"{n:>8} {produced:>10.0f} {first:>13.0f} {last:>11.0f} {deleted:>8} {after:>14.0f}"
        )
