"""Reading topics without joining the work: one factory for viewer consumers, one range reader,
one live tail, one reader of a compacted partition's latest values.

Services that do the work consume through :class:`~services.runtime.kafka.MessageConsumer` (a
consumer group, offsets committed after the output is acknowledged). Everything else only looks:
``compare``, ``eval pipeline``, the dashboard, the lag exporter, the benchmarks and the tests. They
build their consumer with :func:`viewer_consumer` (never commits; a fresh group unless one is
named), read a time range with :func:`read_range`, and follow topics with :func:`tail`.

Both readers work around the embedded Tansu broker in one place. It answers
ListOffsets(latest) with wrong values (seen: 1 for a partition holding 6 records), so end
offsets are never trusted; and ListOffsets by timestamp can land past records of the asked
time (seen: offset 3 for records 1 and 2, produced in one batch right after the timestamp), or
at 0 when nothing is newer. So both seek by timestamp :data:`SEEK_SLACK_MS` early and keep only
the records stamped inside the window: a range is read until a record past its end or until the
topic is idle; a tail keeps the records stamped after it started (nothing written after the call
is missed, even while the consumer is still joining).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka import Message as KafkaMessage

from schemas.base import Message, MessageDecodeError, decode
from services.runtime.settings import KafkaSettings

M = TypeVar("M", bound=Message)

log = logging.getLogger(__name__)

TAIL_SLACK_MS = 1000
"""A tail also keeps records stamped this long before it started (producer/broker clocks)."""
VIEWER_GROUP = "depotwatch-dashboard-viewer"
"""The one fixed group of viewers that assign partitions themselves (dashboard, lag exporter):
never joined or committed, and left out of the lag they report."""
SEEK_SLACK_MS = 60_000
"""Seeks by timestamp start this much earlier (see the module docstring); the extra records
are read and dropped."""


class TopicMissingError(LookupError):
    """The topic to read does not exist (yet)."""


@dataclass(frozen=True)
class Stamped:
    """A raw Kafka record: topic, broker timestamp (ms), headers and value."""

    timestamp_ms: int
    headers: dict[str, bytes]
    value: bytes
    topic: str = ""


def _log_client_error(err: KafkaError) -> None:
    log.warning("kafka client error", extra={"error": str(err)})


def viewer_consumer(
    kafka: KafkaSettings,
    purpose: str,
    group_id: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Consumer:
    """A consumer that only looks: never commits, logs client errors, a fresh group by default.

    ``purpose`` names it (``client.id`` and the fresh group ``depotwatch-<purpose>-<random>``).
    Name ``group_id`` only for a viewer that must not create a group per start (the dashboard).
    """
    conf: dict[str, Any] = {
        **kafka.client_config(),
        "group.id": group_id or f"depotwatch-{purpose}-{uuid.uuid4().hex[:12]}",
        "client.id": f"depotwatch-{purpose}",
        "enable.auto.commit": False,
        "auto.offset.reset": "latest",
        "session.timeout.ms": kafka.session_timeout_ms,
        # A topic subscribed before it exists is found at the next metadata refresh: every
        # 5 s, not librdkafka's default 5 min (a watcher started with the pipeline saw nothing
        # for minutes when it subscribed before the state estimator created its topic).
        "topic.metadata.refresh.interval.ms": 5000,
        "error_cb": _log_client_error,
    }
    conf.update(overrides or {})
    return Consumer(conf)


def stamped(msg: KafkaMessage) -> Stamped:
    """The parts of a record every reader keeps."""
    headers: dict[str, bytes] = {}
    for item in msg.headers() or []:
        key, value = item[0], item[1]
        headers[str(key)] = value if isinstance(value, bytes) else b""
    _, ts = msg.timestamp()
    return Stamped(int(ts), headers, msg.value() or b"", str(msg.topic()))


def read_range(
    kafka: KafkaSettings,
    topic: str,
    start: datetime,
    end: datetime,
    timeout_s: float = 60.0,
    idle_s: float = 3.0,
) -> list[Stamped]:
    """Records of ``topic`` whose broker timestamp lies in [start, end].

    Seeks each partition with ``offsets_for_times`` and reads each until a record past ``end``
    or until nothing arrives from it for ``idle_s``; all of them within ``timeout_s``. (Idle is
    per partition: one that receives nothing after the range must not wait on others that go
    on receiving, which kept a range open until the timeout.) Raises :class:`TopicMissingError`.
    """
    consumer = viewer_consumer(kafka, "range", overrides={"auto.offset.reset": "earliest"})
    out: list[Stamped] = []
    try:
        meta = consumer.list_topics(topic, timeout=10)
        if topic not in meta.topics or meta.topics[topic].error is not None:
            raise TopicMissingError(f"topic {topic} does not exist")
        parts = list(meta.topics[topic].partitions)
        start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
        wanted = consumer.offsets_for_times(
            [TopicPartition(topic, p, start_ms - SEEK_SLACK_MS) for p in parts], timeout=10
        )
        assign = [
            TopicPartition(topic, tp.partition, tp.offset)
            for tp in wanted
            if tp.offset != OFFSET_END and tp.offset >= 0
        ]
        if not assign:
            return out
        consumer.assign(assign)
        now = time.monotonic()
        deadline = now + timeout_s
        # Each partition is read until this; a record from it moves it on (the first fetch
        # takes longer).
        quiet_until = {tp.partition: now + idle_s + 5.0 for tp in assign}
        while quiet_until and now < deadline:
            msg = consumer.poll(0.5)
            now = time.monotonic()
            if msg is not None and not msg.error():
                partition = int(msg.partition() or 0)
                record = stamped(msg)
                if record.timestamp_ms > end_ms:
                    quiet_until.pop(partition, None)
                else:
                    if partition in quiet_until:
                        quiet_until[partition] = now + idle_s
                    if record.timestamp_ms >= start_ms:
                        out.append(record)
            quiet_until = {p: t for p, t in quiet_until.items() if t > now}
    finally:
        consumer.close()
    return out


def read_messages(
    kafka: KafkaSettings,
    topic: str,
    model: type[M],
    start: datetime,
    end: datetime,
    timeout_s: float = 60.0,
) -> list[M]:
    """Messages of ``topic`` in [start, end] by broker timestamp, decoded as ``model``; an
    undecodable record is logged with its reason and skipped. Raises :class:`TopicMissingError`."""
    out: list[M] = []
    for record in read_range(kafka, topic, start, end, timeout_s):
        try:
            out.append(decode(model, record.value))
        except MessageDecodeError as exc:
            log.warning(
                "skipping undecodable message", extra={"topic": topic, "reason": exc.reason}
            )
    return out


_GONE = frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION})
"""Fetch errors that waiting does not cure: the topic or partition is not there."""


def latest_per_key(
    kafka: KafkaSettings, topic: str, partition: int = 0, timeout_s: float = 60.0
) -> dict[bytes, bytes]:
    """The last value of every key in one partition, read from its start to its real end
    (what a compacted topic means; a key whose last record is a tombstone is left out).

    The end is where a fetch reports the partition's high watermark (librdkafka's
    partition-EOF event), never ListOffsets(latest), which the embedded broker answers wrongly.
    Raises :class:`TopicMissingError` (also when the partition goes or the client fails for
    good while reading), or :class:`TimeoutError` when the end is not reached within
    ``timeout_s``.
    """
    overrides = {"enable.partition.eof": True, "auto.offset.reset": "earliest"}
    consumer = viewer_consumer(kafka, "compacted", overrides=overrides)
    latest: dict[bytes, bytes] = {}
    try:
        meta = consumer.list_topics(topic, timeout=10)
        if topic not in meta.topics or meta.topics[topic].error is not None:
            raise TopicMissingError(f"topic {topic} does not exist")
        if partition not in meta.topics[topic].partitions:
            raise TopicMissingError(
                f"cannot read {topic}[{partition}]: the topic has partitions "
                f"{sorted(meta.topics[topic].partitions)}"
            )
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    return latest
                if err.fatal() or err.code() in _GONE:
                    raise TopicMissingError(f"cannot read {topic}[{partition}]: {err.str()}")
                continue  # transient client errors are logged by the error callback
            key = msg.key() or b""
            value = msg.value()
            if value is None:
                latest.pop(key, None)
            else:
                latest[key] = value
        raise TimeoutError(f"{topic}[{partition}] not read to its end within {timeout_s:.0f} s")
    finally:
        consumer.close()


def tail(
    kafka: KafkaSettings,
    topics: Sequence[str],
    stop: Callable[[], bool],
    purpose: str = "tail",
    poll_s: float = 0.5,
) -> Generator[Stamped, None, None]:
    """Records written to ``topics`` from this call on, until ``stop()`` is true.

    Subscribes a fresh viewer group; each partition, when first assigned, is read from shortly
    before the call (by timestamp, see the module docstring) and records stamped before the
    call are dropped; a partition assigned again after a rebalance goes on where it left off,
    so no record is yielded twice. The consumer is closed when the iteration ends, however it
    ends (close the iterator, e.g. with ``contextlib.closing``, to end it early).
    """
    since_ms = int(time.time() * 1000) - TAIL_SLACK_MS
    return _tail(kafka, list(topics), stop, purpose, poll_s, since_ms)


def _tail(
    kafka: KafkaSettings,
    topics: list[str],
    stop: Callable[[], bool],
    purpose: str,
    poll_s: float,
    since_ms: int,
) -> Generator[Stamped, None, None]:
    consumer = viewer_consumer(kafka, purpose)
    resume: dict[tuple[str, int], int] = {}  # next offset of every partition read so far

    def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
        known = [
            TopicPartition(p.topic, p.partition, resume[(p.topic, p.partition)])
            for p in partitions
            if (p.topic, p.partition) in resume
        ]
        new = [p for p in partitions if (p.topic, p.partition) not in resume]
        try:
            found = (
                c.offsets_for_times(
                    [TopicPartition(p.topic, p.partition, since_ms - SEEK_SLACK_MS) for p in new],
                    timeout=10,
                )
                if new
                else []
            )
            starts = [
                TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_END)
                for tp in found
            ]
        except KafkaException as exc:
            log.warning("tail starts at the end: no offsets by time", extra={"error": str(exc)})
            starts = new
        c.assign(known + starts)

    try:
        consumer.subscribe(topics, on_assign=on_assign)
        while not stop():
            msg = consumer.poll(poll_s)
            if msg is None or msg.error():
                continue
            resume[(str(msg.topic()), int(msg.partition() or 0))] = int(msg.offset() or 0) + 1
            record = stamped(msg)
            if record.timestamp_ms >= since_ms:
                yield record
    finally:
        consumer.close()
