"""The one reader of topics for viewers (compare, eval pipeline, fault bench, tests), against the
real embedded broker: a live tail, a time range, a topic that appears after the tail started."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Producer

from schemas.frames import FrameRef
from schemas.topics import TopicSpec
from services.runtime.kafka import TopicAdmin
from services.runtime.settings import Settings
from services.runtime.topic_reader import (
    TAIL_SLACK_MS,
    TopicMissingError,
    latest_per_key,
    read_range,
    tail,
)

DEADLINE_S = 30.0
TAIL_SLACK_S = TAIL_SLACK_MS / 1000 + 0.2
"""History written this long before a tail starts is older than the tail's slack."""


def _produce(settings: Settings, topic: str, values: list[bytes]) -> None:
    producer = Producer(settings.kafka.client_config())
    for v in values:
        producer.produce(topic, value=v, headers={"n": v})
    assert producer.flush(DEADLINE_S) == 0


def _create(settings: Settings, topic: str, partitions: int = 1) -> None:
    TopicAdmin(settings.kafka).ensure([TopicSpec(topic, FrameRef, partitions)], timeout=DEADLINE_S)


def _collect_in_background(
    settings: Settings, topic: str, want: int
) -> tuple[list[bytes], threading.Event, threading.Thread]:
    got: list[bytes] = []
    stop = threading.Event()
    deadline = time.monotonic() + DEADLINE_S

    def run() -> None:
        for record in tail(
            settings.kafka,
            [topic],
            lambda: stop.is_set() or len(got) >= want or time.monotonic() > deadline,
        ):
            assert record.topic == topic
            got.append(record.value)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return got, stop, thread


def test_a_tail_sees_only_what_is_written_after_it_started(
    stack_settings: Settings, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("tail")
    _create(stack_settings, topic)
    _produce(stack_settings, topic, [b"old-1", b"old-2"])
    time.sleep(TAIL_SLACK_S)  # history is older than the tail's slack
    got, _, thread = _collect_in_background(stack_settings, topic, want=2)
    time.sleep(3.0)  # the tail has joined (history would have arrived by now)
    _produce(stack_settings, topic, [b"new-1", b"new-2"])
    thread.join(DEADLINE_S + 5)
    assert got == [b"new-1", b"new-2"]


def test_a_tail_finds_a_topic_created_after_it_subscribed(
    stack_settings: Settings, unique_name: Callable[[str], str]
) -> None:
    """Field failure: the fault suite's watcher subscribed before the state estimator created
    facility-state; librdkafka looks for missing topics every 5 minutes by default, so the
    watcher saw nothing for the whole 300 s start-up wait."""
    topic = unique_name("late")
    got, _, thread = _collect_in_background(stack_settings, topic, want=1)
    time.sleep(2.0)  # subscribed to a topic that does not exist yet
    _create(stack_settings, topic)
    started = time.monotonic()
    while not got and time.monotonic() - started < DEADLINE_S - 5:
        _produce(stack_settings, topic, [b"hello"])
        time.sleep(1.0)
    thread.join(10)
    assert got[:1] == [b"hello"]


def test_a_rebalance_does_not_yield_a_record_twice(
    stack_settings: Settings, unique_name: Callable[[str], str]
) -> None:
    """A second topic appearing reassigns every partition; the first topic's must go on where
    they were, not be read again from the tail's start."""
    first, second = unique_name("first"), unique_name("second")
    _create(stack_settings, first)
    got: list[bytes] = []
    done = threading.Event()
    deadline = time.monotonic() + DEADLINE_S

    def run() -> None:
        stop = lambda: done.is_set() or time.monotonic() > deadline  # noqa: E731
        for record in tail(stack_settings.kafka, [first, second], stop):
            got.append(record.value)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    _produce(stack_settings, first, [b"a1"])  # once: written after the tail started
    while b"a1" not in got and time.monotonic() < deadline:
        time.sleep(0.5)
    _create(stack_settings, second)  # the rebalance
    while b"b1" not in got and time.monotonic() < deadline:
        _produce(stack_settings, second, [b"b1"])
        time.sleep(1.0)
    time.sleep(2.0)
    done.set()
    thread.join(10)
    assert b"b1" in got
    assert got.count(b"a1") == 1, got


def test_a_range_holds_the_records_stamped_inside_it(
    stack_settings: Settings, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("range")
    _create(stack_settings, topic)
    _produce(stack_settings, topic, [b"before"])
    time.sleep(1.1)
    start = datetime.now(UTC)
    _produce(stack_settings, topic, [b"in-1", b"in-2"])
    end = datetime.now(UTC)
    time.sleep(1.1)
    _produce(stack_settings, topic, [b"after"])
    records = read_range(stack_settings.kafka, topic, start, end, timeout_s=DEADLINE_S)
    assert [r.value for r in records] == [b"in-1", b"in-2"]
    assert records[0].headers == {"n": b"in-1"}


def test_a_range_ends_while_another_partition_keeps_receiving(
    stack_settings: Settings, unique_name: Callable[[str], str]
) -> None:
    """Field failure: the fault suite read each fault's window of frames.v1 for the full 60 s
    timeout. A partition with nothing after the window never showed a record past its end,
    while the cameras' partitions kept the reader from going idle."""
    topic = unique_name("range-busy")
    _create(stack_settings, topic, partitions=3)
    producer = Producer(stack_settings.kafka.client_config())
    start = datetime.now(UTC)
    producer.produce(topic, value=b"quiet", partition=1)
    producer.produce(topic, value=b"busy-0", partition=0)
    assert producer.flush(DEADLINE_S) == 0
    end = datetime.now(UTC)
    stop = threading.Event()

    def keep_producing() -> None:
        n = 1
        while not stop.wait(0.05):  # partition 0 never goes idle; 1 and 2 get nothing more
            producer.produce(topic, value=f"busy-{n}".encode(), partition=0)
            producer.poll(0)
            n += 1

    busy = threading.Thread(target=keep_producing, daemon=True)
    busy.start()
    try:
        began = time.monotonic()
        records = read_range(stack_settings.kafka, topic, start, end, timeout_s=4 * DEADLINE_S)
        took = time.monotonic() - began
    finally:
        stop.set()
        busy.join(5)
        producer.flush(DEADLINE_S)
    assert sorted(r.value for r in records) == [b"busy-0", b"quiet"]
    # Ended by reading the range (each partition past its end or idle), not by the timeout.
    assert took < DEADLINE_S, f"read for {took:.0f} s"


def test_a_range_of_a_missing_topic_says_so(
    stack_settings: Settings, unique_name: Callable[[str], str]
) -> None:
    now = datetime.now(UTC)
    with pytest.raises(TopicMissingError, match="does not exist"):
        read_range(stack_settings.kafka, unique_name("none"), now - timedelta(minutes=1), now)


@pytest.mark.integration
def test_latest_per_key_reads_to_the_real_end_where_list_offsets_does_not(
    stack_settings: Settings, unique_name: Callable[[str], str]
) -> None:
    """Field failure: Faust restored the state estimator's table from a changelog read up to
    ListOffsets(latest), which Tansu answers with the offset after the first record of the
    newest batch, and a restarted worker got 1 of a checkpoint's records."""
    topic = unique_name("changelog")
    _create(stack_settings, topic)
    producer = Producer({**stack_settings.kafka.client_config(), "linger.ms": 50})
    for i in range(6):  # one batch: what a checkpoint writes
        producer.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode(), partition=0)
    assert producer.flush(DEADLINE_S) == 0
    producer.produce(topic, key=b"k1", value=b"v1-new", partition=0)
    producer.produce(topic, key=b"k2", value=None, partition=0)  # a tombstone
    assert producer.flush(DEADLINE_S) == 0

    latest = latest_per_key(stack_settings.kafka, topic, timeout_s=DEADLINE_S)

    assert latest == {b"k0": b"v0", b"k1": b"v1-new", b"k3": b"v3", b"k4": b"v4", b"k5": b"v5"}


@pytest.mark.integration
def test_latest_per_key_of_an_empty_or_missing_topic(
    stack_settings: Settings, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("empty")
    _create(stack_settings, topic)
    assert latest_per_key(stack_settings.kafka, topic, timeout_s=DEADLINE_S) == {}
    with pytest.raises(TopicMissingError, match="does not exist"):
        latest_per_key(stack_settings.kafka, unique_name("none"), timeout_s=DEADLINE_S)


@pytest.mark.integration
def test_latest_per_key_of_a_partition_that_is_not_there_fails_at_once(
    stack_settings: Settings, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("one-partition")
    _create(stack_settings, topic)
    began = time.monotonic()
    with pytest.raises(TopicMissingError, match=r"cannot read .*\[3\]"):
        latest_per_key(stack_settings.kafka, topic, partition=3, timeout_s=DEADLINE_S)
    assert time.monotonic() - began < DEADLINE_S / 2  # not the whole timeout
