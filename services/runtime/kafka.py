"""Kafka adapters: a schema-aware producer, a validating consumer that dead-letters bad
messages, and topic administration.

Producers are idempotent with ``acks=all``. Consumers do not auto-store offsets: a service
marks a message ``done`` only after its output is acknowledged, so processing is at-least-once
and nothing is skipped. A message that does not decode as its topic's model is published to
``deadletter.v1`` (original bytes + reason + source offset) and then marked done, so a bad
message never stops a service and is never silently lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka import Message as KafkaMessage
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic
from prometheus_client import Counter

from schemas.base import Message, MessageDecodeError, decode, encode, kafka_time, unknown_fields
from schemas.deadletter import DeadLetter
from schemas.topics import TopicSpec
from services.runtime.ports import DeliveryCallback
from services.runtime.settings import KafkaSettings

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

DEAD_LETTERED = Counter(
    "depotwatch_dead_lettered_total",
    "Messages sent to the dead-letter topic",
    ["service", "source_topic"],
)
CONSUMED = Counter(
    "depotwatch_messages_consumed_total", "Valid messages consumed", ["service", "topic"]
)
UNKNOWN_FIELDS = Counter(
    "depotwatch_messages_unknown_fields_total",
    "Messages read with fields this build does not know (from a newer producer's minor "
    "schema version; kept and ignored)",
    ["service", "topic"],
)
_UNKNOWN_LOGGED: set[tuple[str, str, tuple[str, ...]]] = set()
_UNKNOWN_LOGGED_MAX = 256
_UNKNOWN_NAMES_SHOWN = 10
_UNKNOWN_NAME_CHARS = 64


def note_unknown_fields(service: str, topic: str, message: Message) -> None:
    """Count a message carrying fields this build does not know, and log each new set of
    such fields once per (service, topic): the sign of a newer producer (see schemas.base)."""
    fields = unknown_fields(message)
    if not fields:
        return
    UNKNOWN_FIELDS.labels(service, topic).inc()
    # The names come from the producer: bounded in number and length before kept or logged.
    fields = [name[:_UNKNOWN_NAME_CHARS] for name in sorted(fields)[:_UNKNOWN_NAMES_SHOWN]]
    seen = (service, topic, tuple(fields))
    if seen in _UNKNOWN_LOGGED or len(_UNKNOWN_LOGGED) >= _UNKNOWN_LOGGED_MAX:
        return
    _UNKNOWN_LOGGED.add(seen)
    log.info(
        "message with fields this build does not know (a newer producer?): kept and ignored",
        extra={
            "service": service,
            "topic": topic,
            "fields": fields,
            "schema_version": message.schema_version,
        },
    )


class KafkaUnavailableError(RuntimeError):
    """The broker cannot be reached or refused an operation."""


class ProduceError(RuntimeError):
    """A message was not acknowledged by the broker."""


class MessageProducer:
    """Publishes schema messages to the topic and key their model declares.

    Idempotent and ``acks=all``: the broker writes each message once, in order, and confirms
    only when it is durable.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        client_id: str,
        transactional_id: str | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        conf: dict[str, Any] = {
            **kafka.client_config(),
            "client.id": client_id,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": 30000,
            "error_cb": self._on_error,
        }
        if transactional_id:
            conf["transactional.id"] = transactional_id
        conf.update(overrides or {})
        self._producer = Producer(conf)
        self.client_id = client_id
        self._closed = False

    @staticmethod
    def _on_error(err: KafkaError) -> None:
        # librdkafka retries transient errors itself; log so operators see a broker outage.
        log.warning("kafka client error", extra={"error": str(err)})

    def publish(
        self,
        message: Message,
        flow: str | None = None,
        on_delivery: DeliveryCallback | None = None,
        topic: str | None = None,
    ) -> None:
        """Queue a message; ``on_delivery(err, msg)`` fires from ``poll``/``flush``."""
        name = topic or message.topic_name(flow)
        while True:
            try:
                self._producer.produce(
                    name,
                    value=encode(message),
                    key=message.kafka_key(),
                    on_delivery=on_delivery,
                    headers={"schema": f"{type(message).__name__}/{message.schema_version}"},
                )
                return
            except BufferError:
                # Local queue full: serve delivery reports until there is room again.
                self._producer.poll(0.05)

    def publish_and_wait(
        self,
        message: Message,
        flow: str | None = None,
        timeout: float = 30.0,
        topic: str | None = None,
    ) -> tuple[int, int]:
        """Publish and block until acknowledged; returns (partition, offset).

        On :class:`ProduceError` after ``timeout`` the message may still be queued and be
        delivered later (``message.timeout.ms``), so a retry can duplicate it.
        """
        done = threading.Event()
        result: dict[str, Any] = {}

        def delivered(err: KafkaError | None, msg: KafkaMessage) -> None:
            result["err"], result["msg"] = err, msg
            done.set()

        self.publish(message, flow, on_delivery=delivered, topic=topic)
        deadline = time.monotonic() + timeout
        while not done.is_set():
            if time.monotonic() > deadline:
                raise ProduceError(
                    f"no acknowledgement from the broker within {timeout:.0f}s; "
                    "check DEPOTWATCH_KAFKA__BOOTSTRAP_SERVERS and that the broker is up"
                )
            self._producer.poll(0.05)
        if result["err"] is not None:
            raise ProduceError(f"broker rejected the message: {result['err']}")
        msg = result["msg"]
        return int(msg.partition()), int(msg.offset())

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery callbacks."""
        return int(self._producer.poll(timeout))

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for queued messages; returns how many are still undelivered."""
        return int(self._producer.flush(timeout))

    def purge(self) -> None:
        """Drop every queued and in-flight message; each one's callback reports an error
        (``_PURGE_QUEUE``/``_PURGE_INFLIGHT``) from the next poll, so callers re-send them."""
        self._producer.purge(in_queue=True, in_flight=True)

    def __len__(self) -> int:
        return len(self._producer)

    @property
    def raw(self) -> Producer:
        """The underlying confluent-kafka producer (transactions, benchmarks)."""
        return self._producer

    def close(self, timeout: float = 30.0) -> None:
        """Flush, then release the client; logs how many messages could not be delivered.

        Idempotent. Without the release librdkafka keeps reconnecting (and logging) until the
        object is garbage collected, e.g. after the broker it talked to was stopped.
        """
        if self._closed:
            return
        left = self.flush(timeout)
        if left:
            log.error("messages not delivered at shutdown", extra={"undelivered": left})
        self._closed = True
        self._producer.close()


@dataclass(frozen=True)
class Received(Generic[M]):
    """A valid message and where it came from."""

    message: M
    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int
    raw: KafkaMessage


class MessageConsumer:
    """Consumes topics whose model is known, validating every message.

    ``topics`` maps topic name -> message model. Invalid messages go to ``deadletter.v1`` and
    are skipped; valid ones are returned. Call :meth:`done` once a message's output is
    acknowledged; stored offsets are committed in the background and on :meth:`close`.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        group_id: str,
        topics: Mapping[str, type[Message]],
        service: str,
        dead_letters: MessageProducer,
        auto_offset_reset: str = "earliest",
        overrides: Mapping[str, Any] | None = None,
        defer_dead_letter_offsets: bool = False,
    ) -> None:
        conf: dict[str, Any] = {
            **kafka.client_config(),
            "group.id": group_id,
            "client.id": service,
            "enable.auto.commit": True,
            "auto.commit.interval.ms": 1000,
            "enable.auto.offset.store": False,
            "auto.offset.reset": auto_offset_reset,
            "session.timeout.ms": kafka.session_timeout_ms,
            "heartbeat.interval.ms": max(500, kafka.session_timeout_ms // 4),
            "error_cb": MessageProducer._on_error,
        }
        conf.update(overrides or {})
        self._consumer = Consumer(conf)
        self.models = dict(topics)
        self.service = service
        self.group_id = group_id
        self._dead_letters = dead_letters
        self._max_clock_skew_s = kafka.max_clock_skew_s
        # A caller with messages in flight (batches, read-ahead) sets this, so a bad message's
        # offset never overtakes them; the next done() in its partition covers it instead.
        self._defer_dead_letter_offsets = defer_dead_letter_offsets
        self._consumer.subscribe(list(self.models))

    def poll(self, timeout: float = 1.0) -> Received[Any] | None:
        """The next valid message, or None after ``timeout`` (bad ones are dead-lettered)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            msg = self._consumer.poll(remaining)
            if msg is None:
                return None
            received = self._accept(msg)
            if received is not None:
                return received
            if time.monotonic() >= deadline:
                return None

    def poll_batch(self, max_messages: int, timeout: float) -> list[Received[Any]]:
        """Up to ``max_messages`` valid messages, waiting at most ``timeout``."""
        out: list[Received[Any]] = []
        for msg in self._consumer.consume(max_messages, timeout):
            received = self._accept(msg)
            if received is not None:
                out.append(received)
        return out

    def _accept(self, msg: KafkaMessage) -> Received[Any] | None:
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                return None
            if err.fatal():
                raise KafkaUnavailableError(f"fatal consumer error: {err}")
            log.warning("consumer error", extra={"error": str(err), "service": self.service})
            return None
        topic = str(msg.topic())
        model = self.models.get(topic)
        if model is None:  # pattern subscriptions could bring topics we did not ask for
            self.dead_letter(
                msg,
                f"no message model registered for topic {topic}",
                mark_done=not self._defer_dead_letter_offsets,
            )
            return None
        ts_type, ts = msg.timestamp()
        produced_at = kafka_time(ts) if ts_type != TIMESTAMP_NOT_AVAILABLE else None
        try:
            message = decode(model, msg.value(), produced_at, self._max_clock_skew_s)
        except MessageDecodeError as exc:
            self.dead_letter(msg, exc.reason, mark_done=not self._defer_dead_letter_offsets)
            return None
        CONSUMED.labels(self.service, topic).inc()
        note_unknown_fields(self.service, topic, message)
        return Received(
            message=message,
            topic=topic,
            partition=int(msg.partition() or 0),
            offset=int(msg.offset() or 0),
            key=msg.key(),
            timestamp_ms=int(ts),
            raw=msg,
        )

    def dead_letter(self, msg: KafkaMessage, reason: str, mark_done: bool = True) -> None:
        """Publish ``msg`` to the dead-letter topic (waiting for the ack), then mark it done
        (unless ``mark_done`` is False: the caller marks it, in offset order)."""
        letter = DeadLetter.of(
            topic=str(msg.topic()),
            partition=msg.partition(),
            offset=msg.offset(),
            key=msg.key(),
            value=msg.value(),
            reason=reason,
            service=self.service,
        )
        self._dead_letters.publish_and_wait(letter)
        DEAD_LETTERED.labels(self.service, letter.source_topic).inc()
        log.warning(
            "message dead-lettered",
            extra={
                "source_topic": letter.source_topic,
                "partition": letter.source_partition,
                "offset": letter.source_offset,
                "reason": reason,
            },
        )
        if mark_done:
            self._consumer.store_offsets(message=msg)

    def done(self, received: Received[Any]) -> None:
        """Mark a message processed; its offset is committed with the next commit."""
        self._consumer.store_offsets(message=received.raw)

    def commit(self) -> None:
        """Commit stored offsets now (blocks)."""
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError._NO_OFFSET:
                return
            raise

    def assignment(self) -> list[TopicPartition]:
        """Partitions currently assigned to this consumer."""
        return list(self._consumer.assignment())

    @property
    def raw(self) -> Consumer:
        """The underlying confluent-kafka consumer (seek, offsets_for_times...)."""
        return self._consumer

    def close(self) -> None:
        """Commit what is done and leave the group."""
        try:
            self.commit()
        except KafkaException as exc:
            log.warning("final commit failed", extra={"error": str(exc)})
        self._consumer.close()


def committed_offsets(
    admin: AdminClient, group: str, timeout: float = 5.0
) -> dict[tuple[str, int], int]:
    """What consumer ``group`` has committed, per (topic, partition) (blocking)."""
    fut = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group)], request_timeout=timeout
    )[group]
    return {
        (tp.topic, tp.partition): tp.offset
        for tp in fut.result(timeout).topic_partitions
        if tp.error is None and tp.offset >= 0
    }


class TopicAdmin:
    """Creates and describes topics."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._admin = AdminClient({**kafka.client_config(), "client.id": "depotwatch-admin"})
        self._kafka = kafka

    def wait_until_ready(self, timeout: float) -> None:
        """Block until the broker answers metadata requests."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                self._admin.list_topics(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
                return
            except KafkaException as exc:
                last = exc
                time.sleep(0.2)
        raise KafkaUnavailableError(
            f"Kafka at {self._kafka.bootstrap_servers} did not answer within {timeout:.0f}s "
            f"({last}); start it with `depotwatch infra up` "
            "or fix DEPOTWATCH_KAFKA__BOOTSTRAP_SERVERS"
        )

    def existing(self, timeout: float = 10.0) -> dict[str, int]:
        """Existing topics and their partition counts."""
        meta = self._admin.list_topics(timeout=timeout)
        return {name: len(t.partitions) for name, t in meta.topics.items()}

    def ensure(self, specs: Iterable[TopicSpec], timeout: float = 30.0) -> list[str]:
        """Create missing topics with their partitions and config; returns the created names.

        An existing topic with a different partition count is reported, not changed.
        """
        have = self.existing()
        wanted = list(specs)
        missing = [s for s in wanted if s.name not in have]
        for spec in wanted:
            if spec.name in have and have[spec.name] != spec.partitions:
                log.warning(
                    "topic has a different partition count than configured",
                    extra={"topic": spec.name, "have": have[spec.name], "want": spec.partitions},
                )
        if not missing:
            return []
        futures = self._admin.create_topics(
            [
                NewTopic(s.name, num_partitions=s.partitions, replication_factor=1, config=s.config)
                for s in missing
            ],
            request_timeout=timeout,
        )
        created = []
        for name, fut in futures.items():
            try:
                fut.result(timeout)
                created.append(name)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise KafkaUnavailableError(f"could not create topic {name}: {exc}") from None
        return created

    def groups(self, timeout: float = 5.0) -> list[str]:
        """The ids of every consumer group the broker knows; raises when it could not list
        them all (a caller deciding what every group has read must not miss one)."""
        listed = self._admin.list_consumer_groups(request_timeout=timeout).result(timeout)
        if listed.errors:
            raise RuntimeError(f"listing consumer groups failed: {listed.errors[0]}")
        return sorted(g.group_id for g in listed.valid)

    def committed(self, group: str, timeout: float = 5.0) -> dict[tuple[str, int], int]:
        """What consumer ``group`` has committed, per (topic, partition)."""
        return committed_offsets(self._admin, group, timeout)

    def topic_config(self, name: str, timeout: float = 10.0) -> dict[str, str]:
        """The broker-side config of a topic."""
        res = ConfigResource(ConfigResource.Type.TOPIC, name)
        configs = self._admin.describe_configs([res])[res].result(timeout)
        return {k: v.value for k, v in configs.items() if v.value is not None}
