"""MessageProducer / MessageConsumer / TopicAdmin against the real embedded broker.

Each test writes to topics of its own (the session's shared topics are read by other tests'
consumers from the earliest offset), and reads ``deadletter.v1`` filtered by its own topic.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import Producer
from kafka import KafkaConsumer
from kafka import TopicPartition as KafkaPythonPartition
from message_samples import every_message, frame_ref
from prometheus_client import REGISTRY

from schemas import DeadLetter, FrameRef, Message, decode, encode
from schemas.topics import MESSAGE_MODELS, TopicSpec
from services.runtime.kafka import MessageConsumer, MessageProducer, Received, TopicAdmin
from services.runtime.settings import Settings

DEADLINE_S = 30.0


@pytest.fixture
def producer(stack_settings: Settings) -> Iterator[MessageProducer]:
    """A producer that is flushed at the end of the test."""
    prod = MessageProducer(stack_settings.kafka, client_id="test-producer")
    yield prod
    prod.close(timeout=10)


@pytest.fixture
def make_consumer(
    stack_settings: Settings, producer: MessageProducer, unique_name: Callable[[str], str]
) -> Iterator[Callable[[dict[str, type[Message]]], MessageConsumer]]:
    """Builds consumers in fresh groups; all are closed at the end of the test."""
    made: list[MessageConsumer] = []

    def make(topics: dict[str, type[Message]]) -> MessageConsumer:
        consumer = MessageConsumer(
            stack_settings.kafka,
            group_id=unique_name("group"),
            topics=topics,
            service="test-consumer",
            dead_letters=producer,
        )
        made.append(consumer)
        return consumer

    yield make
    for consumer in made:
        consumer.close()


def create_topics(settings: Settings, specs: list[TopicSpec]) -> None:
    """Create test-owned topics."""
    created = TopicAdmin(settings.kafka).ensure(specs)
    assert sorted(created) == sorted(s.name for s in specs)


def consume(
    consumer: MessageConsumer, count: int, timeout: float = DEADLINE_S
) -> list[Received[Any]]:
    """Poll until ``count`` valid messages arrived (fails the test after ``timeout``)."""
    out: list[Received[Any]] = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        received = consumer.poll(0.5)
        if received is not None:
            out.append(received)
    assert len(out) == count, f"got {len(out)} of {count} messages within {timeout}s"
    return out


def test_every_message_model_round_trips(
    stack_settings: Settings,
    producer: MessageProducer,
    make_consumer: Callable[[dict[str, type[Message]]], MessageConsumer],
    unique_name: Callable[[str], str],
) -> None:
    messages = every_message()
    assert {type(m) for m in messages} == set(MESSAGE_MODELS)
    topics = {unique_name(type(m).__name__.lower()): m for m in messages}
    create_topics(stack_settings, [TopicSpec(t, type(m), 2) for t, m in topics.items()])
    for topic, message in topics.items():
        producer.publish_and_wait(message, topic=topic)

    consumer = make_consumer({t: type(m) for t, m in topics.items()})
    got = {r.topic: r for r in consume(consumer, len(topics))}

    for topic, message in topics.items():
        received = got[topic]
        assert received.message == message
        assert received.key == message.kafka_key()
        headers = dict(received.raw.headers() or [])
        assert headers["schema"] == f"{type(message).__name__}/{message.SCHEMA_VERSION}".encode()
        consumer.done(received)
    consumer.commit()


def test_bad_messages_are_dead_lettered_and_consumption_goes_on(
    stack_settings: Settings,
    producer: MessageProducer,
    make_consumer: Callable[[dict[str, type[Message]]], MessageConsumer],
    unique_name: Callable[[str], str],
) -> None:
    topic = unique_name("frames")
    create_topics(stack_settings, [TopicSpec(topic, FrameRef, 1)])
    good = frame_ref(seq=9)
    wrong_version = json.loads(encode(frame_ref(seq=2)))
    wrong_version["schema_version"] = 0
    missing_field = json.loads(encode(frame_ref(seq=3)))
    del missing_field["sha256"]
    bad = [
        (b"{not json", "Invalid JSON"),
        (json.dumps(wrong_version).encode(), "schema_version 0 is not a version"),
        (json.dumps(missing_field).encode(), "sha256: Field required"),
    ]
    raw = Producer(stack_settings.kafka.client_config())
    for payload, _ in bad:
        raw.produce(topic, value=payload, key=b"cam-s1")
    raw.produce(topic, value=encode(good), key=good.kafka_key())
    assert raw.flush(10) == 0

    consumer = make_consumer({topic: FrameRef})
    (received,) = consume(consumer, 1)
    assert received.message == good
    assert received.offset == len(bad)
    consumer.done(received)
    consumer.commit()
    # Dead-lettered offsets are stored too: a restarted consumer does not see them again.
    committed = consumer.raw.committed(consumer.assignment(), timeout=10)
    assert [tp.offset for tp in committed] == [len(bad) + 1]

    letters_reader = make_consumer({DeadLetter.topic_name(): DeadLetter})
    letters: list[DeadLetter] = []
    deadline = time.monotonic() + DEADLINE_S
    while len(letters) < len(bad) and time.monotonic() < deadline:
        got = letters_reader.poll(0.5)
        if got is not None and got.message.source_topic == topic:
            letters.append(got.message)
    assert len(letters) == len(bad), f"{len(letters)} dead letters for {topic}"
    letters.sort(key=lambda letter: letter.source_offset)
    for offset, (letter, (payload, reason)) in enumerate(zip(letters, bad, strict=True)):
        assert letter.source_offset == offset
        assert letter.source_partition == 0
        assert letter.payload == payload
        assert reason in letter.reason
        assert letter.service == "test-consumer"
        assert letter.source_key_b64 == DeadLetter.b64(b"cam-s1")


def test_a_newer_producers_message_is_read_and_its_new_fields_counted(
    stack_settings: Settings,
    make_consumer: Callable[[dict[str, type[Message]]], MessageConsumer],
    unique_name: Callable[[str], str],
) -> None:
    # Rolling upgrade: a producer one minor version ahead adds a field. The old consumer
    # reads it (it used to dead-letter every such message) and counts the unknown field.
    topic = unique_name("frames")
    create_topics(stack_settings, [TopicSpec(topic, FrameRef, 1)])
    newer = json.loads(encode(frame_ref(seq=5))) | {
        "schema_version": FrameRef.SCHEMA_VERSION + 1,
        "exposure_ms": 8.0,
    }
    raw = Producer(stack_settings.kafka.client_config())
    raw.produce(topic, value=json.dumps(newer).encode(), key=b"cam-s1")
    assert raw.flush(10) == 0
    before = REGISTRY.get_sample_value(
        "depotwatch_messages_unknown_fields_total", {"service": "test-consumer", "topic": topic}
    )
    (received,) = consume(make_consumer({topic: FrameRef}), 1)
    assert received.message.seq == 5
    assert received.message.schema_version == FrameRef.SCHEMA_VERSION + 1
    after = REGISTRY.get_sample_value(
        "depotwatch_messages_unknown_fields_total", {"service": "test-consumer", "topic": topic}
    )
    assert (before or 0.0) + 1.0 == after


def test_an_independent_client_reads_what_confluent_produced(
    stack_settings: Settings, producer: MessageProducer, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("frames")
    create_topics(stack_settings, [TopicSpec(topic, FrameRef, 1)])
    sent = [frame_ref(seq=i) for i in range(5)]
    for message in sent:
        producer.publish(message, topic=topic)
    assert producer.flush(10) == 0

    reader = KafkaConsumer(
        bootstrap_servers=stack_settings.kafka.bootstrap_servers,
        enable_auto_commit=False,
        request_timeout_ms=15000,
    )
    try:
        partition = KafkaPythonPartition(topic, 0)
        reader.assign([partition])
        reader.seek_to_beginning(partition)
        records: list[Any] = []
        deadline = time.monotonic() + DEADLINE_S
        while len(records) < len(sent) and time.monotonic() < deadline:
            for batch in reader.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        reader.close()
    assert [decode(FrameRef, r.value) for r in records] == sent
    assert [r.key for r in records] == [m.kafka_key() for m in sent]


def test_publish_and_wait_returns_partition_and_offset(
    stack_settings: Settings, producer: MessageProducer, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("frames")
    create_topics(stack_settings, [TopicSpec(topic, FrameRef, 1)])
    first = producer.publish_and_wait(frame_ref(seq=1), topic=topic)
    second = producer.publish_and_wait(frame_ref(seq=2), topic=topic)
    assert first == (0, 0)
    assert second == (0, 1)


def test_topic_admin_keeps_an_existing_topic_and_reports_its_config(
    stack_settings: Settings, unique_name: Callable[[str], str]
) -> None:
    admin = TopicAdmin(stack_settings.kafka)
    name = unique_name("compacted")
    spec = TopicSpec(name, FrameRef, 3, {"cleanup.policy": "compact"})
    assert admin.ensure([spec]) == [name]
    assert admin.ensure([spec]) == []
    assert admin.existing()[name] == 3
    assert admin.topic_config(name)["cleanup.policy"] == "compact"
