"""The aggregator's threads and policies, with an in-memory object store and broker.

The real S3 and broker are exercised in tests/integration/test_ingest.py; here the store can be
switched off and on at will, so the ordering rules are checked exactly and fast.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from schemas.frames import FrameRef
from services.aggregator.config import AggregatorSettings
from services.aggregator.service import AggregatorService
from services.benchmarks.ingest_rig import facility_for_cameras
from services.runtime.facility_watch import FacilityWatch
from services.runtime.frame_wire import EncodedFrame, FrameHeader
from services.runtime.settings import S3Settings
from services.runtime.shutdown import ShutdownSignal
from services.runtime.storage import StorageError, StoredObject

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


class MemoryStore:
    """Stands in for ObjectStore: a dict, and a switch that makes every put fail."""

    def __init__(self) -> None:
        self.settings = S3Settings()
        self.bucket = self.settings.bucket
        self.objects: dict[str, bytes] = {}
        self.puts: list[str] = []
        self.down = False
        self.lock = threading.Lock()

    def put(self, key: str, data: bytes, content_type: str = "") -> StoredObject:
        if self.down:
            raise StorageError("object store test: put failed (switched off)")
        with self.lock:
            self.objects[key] = data
            self.puts.append(key)
        return StoredObject(self.bucket, key, len(data), hashlib.sha256(data).hexdigest(), "e")


class MemoryBroker:
    """Stands in for MessageProducer: records each ref with the objects stored at that moment."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.published: list[tuple[FrameRef, bool]] = []
        self._callbacks: list[Callable[[Any, Any], None]] = []
        self.lock = threading.Lock()

    def publish(self, message: FrameRef, on_delivery: Callable[[Any, Any], None]) -> None:
        with self.lock:
            self.published.append((message, message.key in self.store.objects))
            self._callbacks.append(on_delivery)

    def poll(self, timeout: float = 0.0) -> int:
        with self.lock:
            callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb(None, None)
        if not callbacks:
            time.sleep(min(timeout, 0.01))
        return len(callbacks)

    def flush(self, timeout: float = 0.0) -> int:
        self.poll()
        return 0


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
def make_service() -> Iterator[Callable[..., tuple[AggregatorService, MemoryStore, MemoryBroker]]]:
    started: list[tuple[AggregatorService, threading.Thread]] = []

    def make(
        facility: FacilityWatch | None = None, **overrides: Any
    ) -> tuple[AggregatorService, MemoryStore, MemoryBroker]:
        settings = AggregatorSettings(
            bind="tcp://127.0.0.1:*", retry_initial_s=0.01, retry_max_s=0.02, **overrides
        )
        store = MemoryStore()
        broker = MemoryBroker(store)
        service = AggregatorService(
            settings,
            store,  # type: ignore[arg-type]
            broker,  # type: ignore[arg-type]
            ShutdownSignal(),
            facility=facility,
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
    wait_for(lambda: len(broker.published) == 20)
    assert all(stored_first for _, stored_first in broker.published)
    assert [r.seq for r, _ in broker.published] == list(range(20))  # in order per camera
    wait_for(lambda: counter("depotwatch_aggregator_frames_out_total", camera_id=cam) == 20)


def test_a_duplicate_camera_seq_is_stored_once(make_service: Any) -> None:
    service, store, broker = make_service()
    cam = f"c-{uuid.uuid4().hex[:6]}"
    for seq in (1, 2, 2, 3, 1):
        service.accept(frame(cam, seq))
    wait_for(lambda: len(broker.published) == 3)
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
    assert broker.published == []  # nothing is referenced while nothing is stored
    store.down = False
    wait_for(lambda: len(broker.published) == 6)
    # The frame in the worker's hands, then the 5 newest: 1..5 were the oldest, dropped.
    assert [r.seq for r, _ in broker.published] == [0, 6, 7, 8, 9, 10]
    assert all(stored_first for _, stored_first in broker.published)
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
    wait_for(lambda: len(broker.published) == 20)
    assert sorted(store.puts) == sorted(r.key for r, _ in broker.published)


def test_new_cameras_are_accepted_and_watched_by_health(make_service: Any) -> None:
    service, _, broker = make_service(watchdog_s=0.2)
    assert service.health_cameras()[0]  # nothing expected, nothing seen
    cam = f"new-{uuid.uuid4().hex[:6]}"
    service.accept(frame(cam, 0))
    wait_for(lambda: len(broker.published) == 1)
    assert service.health_cameras()[0]
    time.sleep(0.3)
    ok, detail = service.health_cameras()
    assert not ok
    assert cam in detail


def test_health_follows_the_facility_config_as_it_is_edited(
    make_service: Any, tmp_path: Path
) -> None:
    config = tmp_path / "facility.yaml"
    facility_for_cameras(config, {"cam-a": "rtsp://h/a", "cam-b": "rtsp://h/b"}, 2.0)
    service, _, _ = make_service(watchdog_s=0.1, facility=FacilityWatch(config, check_every_s=0))
    time.sleep(0.15)
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
