"""Kafka adapter of the dashboard: tails the topics the page shows, on a background thread.

The dashboard is a viewer, not a stage of the pipeline: it joins no consumer group and commits
nothing. It assigns every partition itself, starting just before the end (the latest facility
state of a compacted topic, the latest frames), and re-reads metadata every few seconds so
topics created after it started (a flow deployed later) are picked up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import (
    OFFSET_END,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from prometheus_client import Counter

from schemas.base import Message, MessageDecodeError, decode, kafka_time
from schemas.estimates import PositionEstimate
from schemas.facility_state import FacilityState
from schemas.frames import FrameRef
from schemas.ground_truth import GroundTruth
from services.runtime.kafka import note_unknown_fields
from services.runtime.settings import KafkaSettings
from services.runtime.topic_reader import VIEWER_GROUP, viewer_consumer

log = logging.getLogger(__name__)

FEED_MESSAGES = Counter(
    "depotwatch_dashboard_messages_total", "Messages the dashboard received", ["topic"]
)
FEED_INVALID = Counter(
    "depotwatch_dashboard_invalid_messages_total",
    "Messages the dashboard could not decode (logged; the pipeline dead-letters them)",
    ["topic"],
)

Sink = Callable[[list[Message]], None]
"""Receives the valid messages of one poll, in order (called on the feed's thread)."""


def dashboard_topics(flows: Iterable[str]) -> dict[str, tuple[type[Message], int]]:
    """topic -> (model, how many of the latest messages per partition to replay at start)."""
    topics: dict[str, tuple[type[Message], int]] = {
        FrameRef.topic_name(): (FrameRef, 1),
        GroundTruth.topic_name(): (GroundTruth, 1),
    }
    for flow in flows:
        topics[FacilityState.topic_name(flow)] = (FacilityState, 1)
        topics[PositionEstimate.topic_name(flow)] = (PositionEstimate, 1)
    return topics


class KafkaFeed:
    """Reads the dashboard topics and hands the valid messages to ``sink``, a poll at a time."""

    def __init__(
        self,
        kafka: KafkaSettings,
        flows: Iterable[str],
        sink: Sink,
        metadata_interval_s: float = 3.0,
    ) -> None:
        self._kafka = kafka
        self._max_clock_skew_s = kafka.max_clock_skew_s
        self.topics = dashboard_topics(flows)
        self._sink = sink
        self._interval = metadata_interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-feed", daemon=True)
        self._assigned: set[tuple[str, int]] = set()
        self.connected = False

    def start(self) -> KafkaFeed:
        """Start tailing; returns self."""
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop and close the consumer."""
        self._stop.set()
        self._thread.join(timeout)

    def _consumer(self) -> Consumer:
        # The group id is required by librdkafka even though the dashboard never joins or
        # commits to it (it assigns partitions itself): one fixed name, not one per start.
        return viewer_consumer(self._kafka, "dashboard", group_id=VIEWER_GROUP)

    def _refresh(self, consumer: Consumer) -> None:
        """Assign partitions that appeared since the last look, starting near their end."""
        try:
            meta = consumer.list_topics(timeout=5)
        except KafkaException as exc:
            self.connected = False
            log.warning("kafka metadata unavailable", extra={"error": str(exc)})
            return
        self.connected = True
        new: list[TopicPartition] = []
        for topic, (_, replay) in self.topics.items():
            t = meta.topics.get(topic)
            if t is None or t.error is not None:
                continue
            for p in t.partitions:
                if (topic, p) in self._assigned:
                    continue
                try:
                    low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)
                except KafkaException:
                    continue
                start = max(low, high - replay) if high >= 0 else OFFSET_END
                new.append(TopicPartition(topic, p, start))
                self._assigned.add((topic, p))
        if new:
            consumer.incremental_assign(new)
            log.info(
                "dashboard reading", extra={"partitions": [f"{t.topic}/{t.partition}" for t in new]}
            )

    def _run(self) -> None:
        consumer = self._consumer()
        next_refresh = 0.0
        try:
            while not self._stop.is_set():
                if time.monotonic() >= next_refresh:
                    self._refresh(consumer)
                    next_refresh = time.monotonic() + self._interval
                if not self._assigned:
                    self._stop.wait(0.2)
                    continue
                batch = [m for m in map(self._handle, consumer.consume(500, 0.2)) if m is not None]
                if batch:
                    self._sink(batch)
        finally:
            consumer.close()

    def _handle(self, msg: Any) -> Message | None:
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error", extra={"error": str(err)})
            return None
        topic = str(msg.topic())
        model = self.topics[topic][0]
        try:
            ts_type, ts = msg.timestamp()
            produced_at = kafka_time(ts) if ts_type != TIMESTAMP_NOT_AVAILABLE else None
            message = decode(model, msg.value(), produced_at, self._max_clock_skew_s)
        except MessageDecodeError as exc:
            FEED_INVALID.labels(topic).inc()
            log.warning(
                "undecodable message ignored by the dashboard",
                extra={"topic": topic, "offset": msg.offset(), "reason": exc.reason},
            )
            return None
        FEED_MESSAGES.labels(topic).inc()
        note_unknown_fields("dashboard", topic, message)
        return message
