"""Consumer lag of every depotwatch consumer group, as a Prometheus metric.

Lag = high watermark - committed offset, per partition, summed per (group, topic). The group
id names the service and the flow (``depotwatch.position-estimator.prod``,
``depotwatch-state-estimator-dev``...); :func:`parse_group` splits it so dashboards can plot lag
per service and flow. Every group on the broker is reported (``group_pattern`` narrows that on
a shared cluster) except the dashboard's viewer group, which commits nothing. A background
thread refreshes the figures every few seconds, so a scrape never waits on the broker.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.runtime.kafka import committed_offsets
from services.runtime.settings import KafkaSettings
from services.runtime.topic_reader import VIEWER_GROUP, viewer_consumer

log = logging.getLogger(__name__)

GROUP_PREFIX = "depotwatch"
VIEWER_GROUPS = frozenset({VIEWER_GROUP})
"""Groups that only read (assign, never commit); they have no lag to report."""

PartitionKey = tuple[str, int]
RECONNECT_AFTER_FAILURES = 3


@dataclass(frozen=True)
class GroupLag:
    """Lag of one consumer group on one topic."""

    group: str
    service: str
    flow: str
    topic: str
    lag: int
    partitions: int


def parse_group(group_id: str, flows: Iterable[str] = ()) -> tuple[str, str]:
    """(service, flow) named by a consumer group id; flow is "" when none is recognised.

    ``depotwatch.position-estimator.prod`` -> (``position-estimator``, ``prod``). With
    ``-`` or ``_`` as separator the flow is recognised only when it is one of ``flows``.
    """
    rest = re.sub(rf"^{GROUP_PREFIX}[._-]", "", group_id)
    if "." in rest:
        head, _, tail = rest.rpartition(".")
        return head, tail
    for flow in sorted(flows, key=len, reverse=True):
        for sep in ("-", "_"):
            if rest.endswith(sep + flow):
                return rest[: -len(sep + flow)], flow
    return rest, ""


def group_lag(
    group: str,
    committed: Mapping[PartitionKey, int],
    high_watermarks: Mapping[PartitionKey, int],
    flows: Iterable[str] = (),
) -> list[GroupLag]:
    """Per-topic lag of a group from its committed offsets and the partitions' high watermarks.

    A partition whose high watermark is unknown is left out rather than guessed.
    """
    service, flow = parse_group(group, flows)
    per_topic: dict[str, list[int]] = {}
    for (topic, partition), offset in committed.items():
        high = high_watermarks.get((topic, partition))
        if high is None or offset < 0:
            continue
        per_topic.setdefault(topic, []).append(max(0, high - offset))
    return [
        GroupLag(group, service, flow, topic, sum(lags), len(lags))
        for topic, lags in sorted(per_topic.items())
    ]


class LagCollector(Collector):
    """Exposes the latest :class:`GroupLag` rows."""

    def __init__(self) -> None:
        self.rows: list[GroupLag] = []
        self.ok = False
        self.updated_at = 0.0

    def collect(self) -> Iterable[GaugeMetricFamily]:
        """``depotwatch_consumer_lag_messages`` and whether the last refresh worked."""
        lag = GaugeMetricFamily(
            "depotwatch_consumer_lag_messages",
            "Messages not yet consumed (high watermark - committed offset), per group and topic",
            labels=["group", "service", "flow", "topic"],
        )
        for row in self.rows:
            lag.add_metric([row.group, row.service, row.flow, row.topic], row.lag)
        ok = GaugeMetricFamily(
            "depotwatch_consumer_lag_up", "1 when the last consumer-lag refresh reached the broker"
        )
        ok.add_metric([], 1.0 if self.ok else 0.0)
        yield from (lag, ok)


class ConsumerLagMonitor:
    """Refreshes the consumer lag of every consumer group on a background thread."""

    def __init__(
        self,
        kafka: KafkaSettings,
        flows: Iterable[str] = (),
        interval_s: float = 5.0,
        group_pattern: str = ".*",
    ) -> None:
        self._kafka = kafka
        self._groups = re.compile(group_pattern)
        self._flows = list(flows)
        self._interval = interval_s
        self.collector = LagCollector()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="consumer-lag", daemon=True)

    def start(self) -> ConsumerLagMonitor:
        """Start refreshing; returns self."""
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop refreshing."""
        self._stop.set()
        self._thread.join(timeout)

    def _clients(self) -> tuple[Any, Any]:

        admin = AdminClient({**self._kafka.client_config(), "client.id": "depotwatch-lag"})
        return admin, viewer_consumer(self._kafka, "lag", group_id=VIEWER_GROUP)

    def _run(self) -> None:
        admin, consumer = self._clients()
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    self.collector.rows = self.refresh(admin, consumer)
                    self.collector.ok = True
                    self.collector.updated_at = time.time()
                    failures = 0
                except Exception as exc:
                    # Never export frozen figures: no rows until the broker answers again.
                    self.collector.rows, self.collector.ok = [], False
                    failures += 1
                    log.warning("consumer lag not refreshed", extra={"error": str(exc)})
                    if failures % RECONNECT_AFTER_FAILURES == 0:
                        # Clients can stay wedged after a broker restart: start afresh.
                        consumer.close()
                        admin, consumer = self._clients()
                self._stop.wait(self._interval)
        finally:
            consumer.close()

    def backlog(self, topics: Collection[str] | None = None) -> int | None:
        """Total lag of the matching groups (on ``topics`` only, if given: a group keeps the
        offsets of a topic it no longer reads), or None when the last good refresh is too old."""
        fresh = time.time() - self.collector.updated_at < 3 * self._interval + 5
        if not (self.collector.ok and fresh):
            return None
        return sum(row.lag for row in self.collector.rows if topics is None or row.topic in topics)

    @classmethod
    def of_group(
        cls, kafka: KafkaSettings, group: str, interval_s: float = 5.0
    ) -> ConsumerLagMonitor:
        """A monitor of one consumer group only (a service's own backlog, for its health)."""
        return cls(kafka, interval_s=interval_s, group_pattern=f"^{re.escape(group)}$")

    def refresh(self, admin: Any, consumer: Any, timeout: float = 5.0) -> list[GroupLag]:
        """Lag rows for every matching consumer group (blocking; talks to the broker)."""

        listed = admin.list_consumer_groups(request_timeout=timeout).result(timeout)
        groups = sorted(
            g.group_id
            for g in listed.valid
            if self._groups.match(g.group_id) and g.group_id not in VIEWER_GROUPS
        )
        rows: list[GroupLag] = []
        high: dict[PartitionKey, int] = {}
        for group in groups:
            committed = committed_offsets(admin, group, timeout)
            for key in committed:
                if key not in high:
                    _, hi = consumer.get_watermark_offsets(TopicPartition(*key), timeout=timeout)
                    high[key] = hi
            rows += group_lag(group, committed, high, self._flows)
        return rows
