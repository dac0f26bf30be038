"""The aggregator's threads and policies, with an in-memory object store and broker.

The real S3 and broker are exercised in tests/integration/test_ingest_path.py; here the fakes of
tests/fakes.py switch the store off and on and make the broker refuse, stop answering or fence
the producer, so the ordering rules and every failure branch are checked exactly and fast.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError
from fakes import Clock, FakePublisher, FakeStore, PublishFaults
from prometheus_client import REGISTRY

from schemas.frames import FrameRef
from services.aggregator.config import AggregatorSettings
from services.aggregator.service import AggregatorService
from services.benchmarks.ingest_rig import facility_for_cameras
from services.runtime.facility_watch import FacilityWatch
from services.runtime.frame_wire import EncodedFrame, FrameHeader
from services.runtime.shutdown import ShutdownSignal

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


class RecordingBroker(FakePublisher):
    """The fake broker, also noting for each ref whether its object was stored when sent."""

    def __init__(self, store: FakeStore, faults: PublishFaults | None = None) -> None:
        super().__init__(faults)
        self.store = store
        self.refs: list[tuple[FrameRef, bool]] = []

    def publish(
        self,
        message: Any,
        flow: str | None = None,
        on_delivery: Any = None,
        topic: str | None = None,
    ) -> None:
        with self.lock:
            self.refs.append((message, (message.bucket, message.key) in self.store.objects))
        super().publish(message, flow, on_delivery, topic)


def frame(camera_id: str, seq: int) -> EncodedFrame:
    header = FrameHeader(
        camera_id=camera_id,
        seq=seq,
        captured_at=T0 + timedelta(milliseconds=200 * seq),
        width=4,
        height=4,
    )
    return EncodedFrame(header, b"\xff\xd8" + f"{camera_id}-{seq}".encode())


@pytest.fixture
def make_service() -> Iterator[Callable[..., tuple[AggregatorService, FakeStore, RecordingBroker]]]:
    started: list[tuple[AggregatorService, threading.Thread]] = []

    def make(
        facility: FacilityWatch | None = None,
        faults: PublishFaults | None = None,
        new_producer: Callable[[], RecordingBroker] | None = None,
        clock: Callable[[], float] = time.monotonic,
        **overrides: Any,
    ) -> tuple[AggregatorService, FakeStore, RecordingBroker]:
        settings = AggregatorSettings(
            bind="tcp://127.0.0.1:*",
            retry_initial_s=0.01,
            retry_max_s=0.02,
            **{"drain_timeout_s": 1.0, **overrides},
        )
        store = FakeStore()
        broker = RecordingBroker(store, faults)
        service = AggregatorService(
            settings,
            store,
            broker,
            ShutdownSignal(),
            facility=facility,
            new_producer=new_producer,
            clock=clock,
        )
        thread = threading.Thread(target=service.run, daemon=True)
        thread.start()
        started.append((service, thread))
        return service, store, broker

    yield make
    for service, thread in started:
        service.shutdown.request()
        thread.join(10)


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_refs_are_published_only_after_their_object_is_stored(make_service: Any) -> None:
    service, _, broker = make_service()
    cam = f"c-{uuid.uuid4().hex[:6]}"
    for seq in range(20):
        service.accept(frame(cam, seq))
    wait_for(lambda: len(broker.refs) == 20)
    assert all(stored_first for _, stored_first in broker.refs)
    assert [r.seq for r, _ in broker.refs] == list(range(20))  # in order per camera
    wait_for(lambda: counter("depotwatch_aggregator_frames_out_total", camera_id=cam) == 20)


def test_a_duplicate_camera_seq_is_stored_once(make_service: Any) -> None:
    service, store, broker = make_service()
    cam = f"c-{uuid.uuid4().hex[:6]}"
    for seq in (1, 2, 2, 3, 1):
        service.accept(frame(cam, seq))
    wait_for(lambda: len(broker.refs) == 3)
    time.sleep(0.05)
    assert len(store.puts) == 3
    assert counter("depotwatch_aggregator_duplicates_total", camera_id=cam) == 2


def test_s3_down_buffers_within_budget_drops_oldest_and_catches_up(make_service: Any) -> None:
    service, store, broker = make_service(buffer_frames=5, store_workers=1)
    cam = f"c-{uuid.uuid4().hex[:6]}"
    store.down = True
    service.accept(frame(cam, 0))  # taken by the worker, retried while S3 is down
    wait_for(lambda: len(service.queues[0]) == 0)
    for seq in range(1, 11):
        service.accept(frame(cam, seq))
    assert len(service.queues[0]) == 5
    assert broker.refs == []  # nothing is referenced while nothing is stored
    store.down = False
    wait_for(lambda: len(broker.refs) == 6)
    # The frame in the worker's hands, then the 5 newest: 1..5 were the oldest, dropped.
    assert [r.seq for r, _ in broker.refs] == [0, 6, 7, 8, 9, 10]
    assert all(stored_first for _, stored_first in broker.refs)
    assert (
        counter("depotwatch_aggregator_frames_dropped_total", camera_id=cam, reason="buffer_full")
        == 5
    )
    health_ok, _ = service.health_store()
    assert health_ok


def test_shutdown_stores_what_is_buffered_before_returning(make_service: Any) -> None:
    service, store, broker = make_service(store_workers=2)
    cams = [f"c-{uuid.uuid4().hex[:6]}" for _ in range(4)]
    store.down = True
    for seq in range(5):
        for cam in cams:
            service.accept(frame(cam, seq))
    store.down = False
    service.shutdown.request()
    wait_for(lambda: len(broker.refs) == 20)
    assert sorted(store.puts) == sorted(r.key for r, _ in broker.refs)


def test_new_cameras_are_accepted_and_watched_by_health(make_service: Any) -> None:
    clock = Clock()
    service, _, broker = make_service(watchdog_s=10, clock=clock)
    assert service.health_cameras()[0]  # nothing expected, nothing seen
    cam = f"new-{uuid.uuid4().hex[:6]}"
    service.accept(frame(cam, 0))
    wait_for(lambda: len(broker.refs) == 1)
    assert service.health_cameras()[0]
    clock.advance(9)
    assert service.health_cameras()[0]
    clock.advance(2)
    ok, detail = service.health_cameras()
    assert not ok
    assert cam in detail


def test_health_follows_the_facility_config_as_it_is_edited(
    make_service: Any, tmp_path: Path
) -> None:
    config = tmp_path / "facility.yaml"
    facility_for_cameras(config, {"cam-a": "rtsp://h/a", "cam-b": "rtsp://h/b"}, 2.0)
    clock = Clock()
    service, _, _ = make_service(
        watchdog_s=10, clock=clock, facility=FacilityWatch(config, check_every_s=0)
    )
    clock.advance(11)
    ok, detail = service.health_cameras()
    assert not ok
    assert "cam-a" in detail
    assert "never seen" in detail
    # The operator removes both cameras and adds one that is delivering.
    facility_for_cameras(config, {"cam-c": "rtsp://h/c"}, 2.0)
    os.utime(config, (time.time() + 5, time.time() + 5))
    service.accept(frame("cam-c", 0))
    ok, detail = service.health_cameras()
    assert ok, detail


def test_refs_the_broker_refuses_are_sent_again_until_acknowledged(make_service: Any) -> None:
    service, _, broker = make_service(faults=PublishFaults(reject={0, 1}), watchdog_s=60)
    cam = f"c-{uuid.uuid4().hex[:6]}"
    retries = counter("depotwatch_aggregator_produce_failures_total")
    for seq in range(3):
        service.accept(frame(cam, seq))
    wait_for(lambda: sorted(r.seq for r in broker.acknowledged) == [0, 1, 2])
    assert counter("depotwatch_aggregator_produce_failures_total") - retries == 2
    assert service.health_kafka()[0]  # acknowledged again: the failure is over


def test_kafka_health_fails_while_the_broker_refuses_for_the_watchdog_period(
    make_service: Any,
) -> None:
    clock = Clock()
    service, _, broker = make_service(
        faults=PublishFaults(fail_after=0), watchdog_s=10, clock=clock
    )
    service.accept(frame(f"c-{uuid.uuid4().hex[:6]}", 0))
    wait_for(lambda: len(broker.refs) >= 2)  # refused, sent again
    clock.advance(9)
    assert service.health_kafka()[0]  # failing, but not for the watchdog period yet
    clock.advance(2)
    ok, detail = service.health_kafka()
    assert not ok
    assert "kafka failing" in detail
    assert broker.acknowledged == []


def test_a_fenced_producer_is_replaced_and_its_refs_go_out_on_the_new_one(
    make_service: Any,
) -> None:
    fresh: list[RecordingBroker] = []

    def new_producer() -> RecordingBroker:
        fresh.append(RecordingBroker(FakeStore()))
        return fresh[-1]

    service, _, old = make_service(
        faults=PublishFaults(fail_after=0, error_code=KafkaError.PRODUCER_FENCED),
        new_producer=new_producer,
    )
    cam = f"c-{uuid.uuid4().hex[:6]}"
    for seq in range(3):
        service.accept(frame(cam, seq))
    wait_for(lambda: bool(fresh) and sorted(r.seq for r in fresh[0].acknowledged) == [0, 1, 2])
    assert len(fresh) == 1  # one replacement, not one per refused ref
    assert service.producer is fresh[0]
    assert old.acknowledged == []


def test_refs_awaiting_acks_are_bounded_when_the_broker_stops_answering(
    make_service: Any,
) -> None:
    service, store, broker = make_service(
        faults=PublishFaults(acknowledge=False), pending_refs=3, store_workers=1
    )
    cam = f"c-{uuid.uuid4().hex[:6]}"
    for seq in range(10):
        service.accept(frame(cam, seq))
    wait_for(lambda: len(broker.refs) == 3)
    wait_for(lambda: len(store.puts) == 4)  # the worker stores one more frame, then waits
    time.sleep(0.2)
    assert len(broker.refs) == 3  # ...instead of piling up refs
    assert len(store.puts) == 4
    broker.faults.acknowledge = True
    wait_for(lambda: len(broker.acknowledged) == 10)


def test_store_health_fails_while_puts_fail_for_the_watchdog_period(make_service: Any) -> None:
    clock = Clock()
    service, store, _ = make_service(watchdog_s=10, clock=clock)
    store.down = True
    service.accept(frame(f"c-{uuid.uuid4().hex[:6]}", 0))
    wait_for(lambda: store.calls >= 2)  # failed, retried
    clock.advance(9)
    assert service.health_store()[0]
    clock.advance(2)
    ok, detail = service.health_store()
    assert not ok
    assert "object store failing" in detail
    store.down = False
    wait_for(lambda: service.health_store()[0])


def test_the_bucket_is_prepared_once_the_store_answers(caplog: pytest.LogCaptureFixture) -> None:
    store = FakeStore()
    store.fail_next = 3
    service = AggregatorService(
        AggregatorSettings(bind="tcp://127.0.0.1:*", retry_initial_s=0.01, retry_max_s=0.02),
        store,
        FakePublisher(),
        ShutdownSignal(),
    )
    try:
        service.prepare_bucket()
        assert store.calls == 4  # three refused, the fourth created it
        assert caplog.text.count("object store not ready") == 3
    finally:
        service.receiver.close()
