"""The aggregator process: receive frames, store each in S3, then publish its FrameRef.

Threads:
- receiver: ZeroMQ PULL -> decode -> drop duplicates -> the owning worker's buffer;
- store workers (one per shard of cameras, so a camera's frames stay in order): put the JPEG,
  retrying with backoff while S3 is down, and only then publish the FrameRef;
- delivery: serves the producer's acknowledgements and re-publishes refs the broker refused.

Buffers are bounded (frames and bytes); when S3 is down long enough to fill them the oldest
frames are dropped and counted. A FrameRef is never published before its object is stored.
Refs of one camera are published in capture order; only a ref the broker refused (outage
longer than ``message.timeout.ms``) is re-sent later, after newer ones.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from confluent_kafka import KafkaError
from confluent_kafka import Message as KafkaMessage
from prometheus_client import Counter, Gauge, Histogram

from schemas.base import utc_now
from schemas.frames import FrameRef
from services.aggregator.config import AggregatorSettings
from services.aggregator.ingest import CameraActivity, DedupeWindow, frame_key, frame_ref, shard_of
from services.runtime.backoff import Backoff
from services.runtime.facility_watch import FacilityWatch
from services.runtime.frame_queue import FrameQueue
from services.runtime.frame_transport import FrameReceiver
from services.runtime.frame_wire import EncodedFrame, FrameDecodeError, decode_frame
from services.runtime.ports import BlobStore, Publisher
from services.runtime.shutdown import ShutdownSignal
from services.runtime.storage import StorageError

log = logging.getLogger(__name__)

FRAMES_IN = Counter(
    "depotwatch_aggregator_frames_in_total", "Frames received from captures", ["camera_id"]
)
FRAMES_STORED = Counter(
    "depotwatch_aggregator_frames_stored_total", "Frames stored in the object store", ["camera_id"]
)
FRAMES_OUT = Counter(
    "depotwatch_aggregator_frames_out_total", "FrameRefs acknowledged by the broker", ["camera_id"]
)
FRAMES_DROPPED = Counter(
    "depotwatch_aggregator_frames_dropped_total",
    "Frames not stored or refs not published (buffer_full, shutdown, ref_undelivered)",
    ["camera_id", "reason"],
)
DUPLICATES = Counter(
    "depotwatch_aggregator_duplicates_total",
    "Frames already received (same camera, seq)",
    ["camera_id"],
)
BAD_MESSAGES = Counter(
    "depotwatch_aggregator_bad_messages_total", "ZeroMQ messages that were not valid frames"
)
S3_RETRIES = Counter("depotwatch_aggregator_s3_put_failures_total", "Failed S3 puts (retried)")
REF_RETRIES = Counter(
    "depotwatch_aggregator_produce_failures_total", "FrameRefs the broker did not ack (re-sent)"
)
QUEUE_DEPTH = Gauge("depotwatch_aggregator_queue_depth", "Frames buffered, not yet stored")
QUEUE_BYTES = Gauge("depotwatch_aggregator_queue_bytes", "Bytes buffered, not yet stored")
PRODUCER_REPLACED = Counter(
    "depotwatch_aggregator_producer_replaced_total",
    "Kafka producers replaced because the broker fenced them",
)
PENDING_REFS = Gauge("depotwatch_aggregator_pending_refs", "FrameRefs awaiting a broker ack")
CAMERAS = Gauge("depotwatch_aggregator_cameras", "Cameras seen since start")
S3_PUT_SECONDS = Histogram(
    "depotwatch_aggregator_s3_put_seconds",
    "Latency of one successful S3 put",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
)
CAPTURE_TO_STORED = Histogram(
    "depotwatch_aggregator_capture_to_stored_seconds",
    "Frame capture time to its image stored (capture, ZeroMQ, aggregator queue, S3 put)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10),
)
PRODUCE_SECONDS = Histogram(
    "depotwatch_aggregator_produce_seconds",
    "From publishing a FrameRef to the broker's ack",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 30),
)


# Errors after which this producer's identity is unusable: only a new producer gets through.
PRODUCER_STATE_ERRORS = frozenset(
    {
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError._FATAL,
    }
)


@dataclass(frozen=True)
class _PendingRef:
    ref: FrameRef
    attempt: int


class AggregatorService:
    """Runs until shutdown; :meth:`run` returns after draining within ``drain_timeout_s``."""

    def __init__(
        self,
        settings: AggregatorSettings,
        store: BlobStore,
        producer: Publisher,
        shutdown: ShutdownSignal,
        expected_cameras: Iterable[str] = (),
        facility: FacilityWatch | None = None,
        new_producer: Callable[[], Publisher] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        """Time of the watchdogs (camera silence, store and broker failing); tests inject one."""
        self.settings = settings
        self.store = store
        self.producer = producer
        self._new_producer = new_producer
        self._replace_producer = threading.Event()
        self._retired: list[Publisher] = []
        self.shutdown = shutdown
        self.facility = facility
        if facility is not None:
            expected_cameras = [c.id for c in facility.config.captured_cameras]
        self.activity = CameraActivity(self.clock(), expected_cameras)
        self._dedupe = DedupeWindow(settings.dedupe_window)
        per_shard = max(1, settings.buffer_frames // settings.store_workers)
        per_shard_bytes = int(settings.buffer_mb * 2**20 / settings.store_workers)
        self.queues: list[FrameQueue[EncodedFrame]] = [
            FrameQueue(per_shard, per_shard_bytes) for _ in range(settings.store_workers)
        ]
        self._retry_refs: deque[_PendingRef] = deque()
        self._pending = 0
        self._pending_by_camera: Tally[str] = Tally()
        self._pending_lock = threading.Lock()
        self._receiving_stopped = threading.Event()
        self._drain_deadline: float | None = None
        self._workers_done = threading.Event()
        self._store_failing_since: float | None = None
        self._kafka_failing_since: float | None = None
        self.receiver = FrameReceiver(settings.bind, settings.receive_hwm)

    @property
    def endpoint(self) -> str:
        """Where captures connect (the real port when ``*`` or 0 was asked for)."""
        return self.receiver.endpoint

    # -- health --------------------------------------------------------------------------
    def health_cameras(self) -> tuple[bool, str]:
        """Fails when a known camera has delivered nothing for the watchdog period.

        Known: enabled in the facility config (re-read when the file changes), or seen.
        """
        if self.facility is not None and self.facility.refresh():
            self.activity.set_expected(c.id for c in self.facility.config.enabled_cameras)
        silent = self.activity.silent(self.clock(), self.settings.watchdog_s)
        if silent:
            names = ", ".join(
                f"{s.camera_id} ({s.silent_s:.0f}s{'' if s.ever_seen else ', never seen'})"
                for s in silent
            )
            return False, f"no frames from {names}"
        return True, f"{len(self.activity.cameras())} camera(s) delivering"

    def health_store(self) -> tuple[bool, str]:
        """Fails when S3 puts have been failing for the watchdog period."""
        return self._failing("object store", self._store_failing_since)

    def health_kafka(self) -> tuple[bool, str]:
        """Fails when the broker has refused FrameRefs for the watchdog period."""
        return self._failing("kafka", self._kafka_failing_since)

    def _failing(self, what: str, since: float | None) -> tuple[bool, str]:
        if since is None:
            return True, f"{what} ok"
        down = self.clock() - since
        return down <= self.settings.watchdog_s, f"{what} failing for {down:.0f}s, retrying"

    # -- lifecycle -----------------------------------------------------------------------
    def prepare_bucket(self) -> None:
        """Create the bucket and its frame-expiry rule; retry until S3 answers or shutdown."""
        backoff = Backoff(self.settings.retry_initial_s, self.settings.retry_max_s)
        days = self.store.settings.frame_retention_days
        while not self.shutdown.requested:
            try:
                self.store.ensure_bucket()
            except StorageError as exc:
                delay = backoff.next_delay()
                log.warning(
                    "object store not ready", extra={"error": str(exc), "retry_in_s": delay}
                )
                self.shutdown.wait(delay)
                continue
            try:
                # One bucket-wide rule (as `depotwatch infra up` sets it): a per-prefix rule
                # would replace rules other writers of the bucket rely on.
                if self.store.expiry_days() != days:
                    self.store.set_expiry(days)
            except StorageError as exc:
                # Some S3 servers lack lifecycle rules; frames are still stored, so go on.
                log.warning(
                    "could not set the frame expiry rule; frames will not expire by themselves",
                    extra={"error": str(exc), "retention_days": days},
                )
            return

    def run(self) -> None:
        """Serve until shutdown, then drain buffers and flush the producer."""
        workers = [
            threading.Thread(target=self._store_loop, args=(i,), name=f"store-{i}", daemon=True)
            for i in range(len(self.queues))
        ]
        delivery = threading.Thread(target=self._delivery_loop, name="delivery", daemon=True)
        for t in [*workers, delivery]:
            t.start()
        log.info("aggregator receiving", extra={"endpoint": self.endpoint})
        try:
            self._receive_loop()
        finally:
            deadline = time.monotonic() + self.settings.drain_timeout_s
            self._drain_deadline = deadline
            self._receiving_stopped.set()
            self.receiver.close()
            for t in workers:
                t.join(timeout=max(0.1, deadline - time.monotonic()) + 1)
            self._workers_done.set()
            delivery.join(timeout=max(0.1, deadline - time.monotonic()) + 2)
            self._count_undelivered()

    def _count_undelivered(self) -> None:
        left = self.producer.flush(timeout=1.0)
        with self._pending_lock:
            unacked = self._pending_by_camera + Tally(p.ref.camera_id for p in self._retry_refs)
        for camera_id, n in unacked.items():
            FRAMES_DROPPED.labels(camera_id, "ref_undelivered").inc(n)
        if left or self._retry_refs:
            log.error(
                "frame refs not delivered at shutdown (objects are stored)",
                extra={"in_producer": left, "refused": len(self._retry_refs)},
            )

    # -- receiver ------------------------------------------------------------------------
    def _receive_loop(self) -> None:
        while not self.shutdown.requested:
            parts = self.receiver.receive(0.2)
            if parts is None:
                continue
            try:
                frame = decode_frame(parts)
            except FrameDecodeError as exc:
                BAD_MESSAGES.inc()
                log.warning("bad frame message dropped", extra={"reason": str(exc)})
                continue
            self.accept(frame)

    def accept(self, frame: EncodedFrame) -> None:
        """Route one received frame to its worker's buffer (receiver thread only)."""
        cid = frame.header.camera_id
        FRAMES_IN.labels(cid).inc()
        if self.activity.record(cid, self.clock()):
            CAMERAS.set(len(self.activity.cameras()))
            log.info("new camera", extra={"camera_id": cid})
        if not self._dedupe.first_time(cid, frame.header.seq):
            DUPLICATES.labels(cid).inc()
            return
        queue = self.queues[shard_of(cid, len(self.queues))]
        for old in queue.put(frame):
            FRAMES_DROPPED.labels(old.header.camera_id, "buffer_full").inc()
        self._update_depth()

    def _update_depth(self) -> None:
        QUEUE_DEPTH.set(sum(len(q) for q in self.queues))
        QUEUE_BYTES.set(sum(q.bytes for q in self.queues))

    # -- store workers -------------------------------------------------------------------
    def _past_drain_deadline(self) -> bool:
        deadline = self._drain_deadline
        return deadline is not None and time.monotonic() > deadline

    def _store_loop(self, shard: int) -> None:
        queue = self.queues[shard]
        backoff = Backoff(self.settings.retry_initial_s, self.settings.retry_max_s)
        while not self._past_drain_deadline():
            frame = queue.get(timeout=0.1)
            if frame is None:
                if self._receiving_stopped.is_set():
                    break
                continue
            self._update_depth()
            if not self._store_and_publish(frame, backoff):
                queue.put_front(frame)
                break
        for frame in queue.drain():
            FRAMES_DROPPED.labels(frame.header.camera_id, "shutdown").inc()
        self._update_depth()

    def _store_and_publish(self, frame: EncodedFrame, backoff: Backoff) -> bool:
        """Store (retrying while S3 is down) then publish; False if draining ran out of time."""
        h = frame.header
        key = frame_key(self.settings.key_prefix, h.camera_id, h.captured_at, h.seq)
        while True:
            started = time.perf_counter()
            try:
                stored = self.store.put(key, frame.jpeg, content_type="image/jpeg")
                break
            except StorageError as exc:
                S3_RETRIES.inc()
                if self._store_failing_since is None:
                    self._store_failing_since = self.clock()
                    log.warning(
                        "object store put failed; buffering and retrying", extra={"error": str(exc)}
                    )
            # A plain sleep, not shutdown.wait: while draining, a frame is still worth storing
            # if S3 comes back before the drain deadline.
            time.sleep(backoff.next_delay())
            if self._past_drain_deadline():
                return False
        S3_PUT_SECONDS.observe(time.perf_counter() - started)
        if self._store_failing_since is not None:
            down = self.clock() - self._store_failing_since
            log.info("object store back", extra={"down_s": round(down, 1)})
            self._store_failing_since = None
        backoff.reset()
        FRAMES_STORED.labels(h.camera_id).inc()
        stored_at = utc_now()
        CAPTURE_TO_STORED.observe(max(0.0, (stored_at - h.captured_at).total_seconds()))
        ref = frame_ref(h, stored.bucket, stored.key, stored.size, stored.sha256, stored_at)
        self._publish(_PendingRef(ref, 0))
        return True

    # -- publishing ----------------------------------------------------------------------
    def _publish(self, pending: _PendingRef) -> None:
        # Bounded: refs awaiting acks are small, but an endless broker outage must not grow
        # them; serve acks (poll) while waiting, since the waiter may be the delivery thread.
        while True:
            with self._pending_lock:
                if self._pending < self.settings.pending_refs or self._workers_done.is_set():
                    self._pending += 1
                    self._pending_by_camera[pending.ref.camera_id] += 1
                    PENDING_REFS.set(self._pending)
                    break
            self.producer.poll(0.1)
        sent = time.perf_counter()
        producer = self.producer

        def delivered(err: KafkaError | None, msg: KafkaMessage) -> None:
            with self._pending_lock:
                self._pending -= 1
                self._pending_by_camera[pending.ref.camera_id] -= 1
                PENDING_REFS.set(self._pending)
            if err is None:
                PRODUCE_SECONDS.observe(time.perf_counter() - sent)
                FRAMES_OUT.labels(pending.ref.camera_id).inc()
                if self._kafka_failing_since is not None:
                    log.info("broker acknowledges frame refs again")
                    self._kafka_failing_since = None
                return
            REF_RETRIES.inc()
            fenced = err.fatal() or err.code() in PRODUCER_STATE_ERRORS
            if fenced and producer is self.producer:  # not again for an already replaced one
                self._replace_producer.set()
            if self._kafka_failing_since is None:
                self._kafka_failing_since = self.clock()
                log.warning("frame ref not acknowledged; will re-send", extra={"error": str(err)})
            self._retry_refs.append(_PendingRef(pending.ref, pending.attempt + 1))

        producer.publish(pending.ref, on_delivery=delivered)

    def _swap_producer(self) -> None:
        """Replace a producer the broker no longer accepts; its refs are re-sent by the new one.

        After a broker restart or a message timeout, librdkafka's idempotent producer may be
        fenced for good (Tansu answers PRODUCER_FENCED to its epoch bump): only a new producer
        (a new producer id) gets through.
        """
        self._replace_producer.clear()
        if self._new_producer is None:
            return
        old, self.producer = self.producer, self._new_producer()
        # Purged messages report an error to their callback, which queues them for re-sending.
        old.purge()
        self._retired.append(old)
        PRODUCER_REPLACED.inc()
        log.warning("kafka producer replaced after the broker stopped accepting it")

    def _delivery_loop(self) -> None:
        backoff = Backoff(self.settings.retry_initial_s, self.settings.retry_max_s)
        while True:
            if self._replace_producer.is_set():
                self._swap_producer()
            for retired in list(self._retired):
                retired.poll(0)
                if len(retired) == 0:
                    self._retired.remove(retired)
            self.producer.poll(0.05)
            if self._retry_refs and not self._past_drain_deadline():
                # librdkafka already retried for message.timeout.ms; a short pause suffices.
                time.sleep(min(backoff.next_delay(), 1.0))
                while self._retry_refs:
                    self._publish(self._retry_refs.popleft())
            elif self._kafka_failing_since is None:
                backoff.reset()
            if self._workers_done.is_set():
                with self._pending_lock:
                    idle = self._pending == 0
                if (idle and not self._retry_refs) or self._past_drain_deadline():
                    return
