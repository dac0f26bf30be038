"""The loop every per-frame estimator shares: messages about frames in, estimates out, at least
once.

A :class:`FrameSource` says what is consumed: ``frames.v1`` refs (the position estimator), or
the flow's position estimates (the plate reader, which reads the plate boxes the detector
already found and needs the frame only when one is there). Messages are consumed in batches (up
to ``max_batch`` or ``max_wait_ms``), the JPEGs their handler needs fetched from the object
store in parallel and decoded, handed to the service's pure handler with their messages, and its
output published. Offsets are marked done only after every output of the batch
is acknowledged by the broker (in batch order, without stopping the loop to wait for acks), so
a crash re-processes at most the batches in flight. While one batch is inferred, the messages
already waiting are read ahead and their frames fetched.

* live mode: when the service falls behind, only the newest frame per camera is processed; the
  older ones are skipped and counted (``depotwatch_frames_skipped_total``).
* replay mode: every frame is processed, in order.

A message whose frame object is missing, truncated or not an image is dead-lettered and the loop
goes on, and so is one the handler fails on (it is retried alone first, so the rest of its batch
is handled); an object store outage is not the frame's fault, so the batch is retried until the
store answers.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from confluent_kafka import KafkaError
from confluent_kafka import Message as KafkaMessage
from prometheus_client import Counter, Gauge, Histogram

from schemas.base import Message, utc_now
from schemas.frames import FrameRef
from services.runtime.consumer_lag import ConsumerLagMonitor
from services.runtime.frames import (
    DecodedFrame,
    FrameDecodeError,
    FrameOutcome,
    Rejected,
    decode_frame,
    decode_reduction,
)
from services.runtime.kafka import (
    KafkaUnavailableError,
    MessageConsumer,
    MessageProducer,
    ProduceError,
    Received,
)
from services.runtime.observability import (
    Health,
    ObservabilityServer,
    ProgressWatch,
    with_grace,
)
from services.runtime.ports import BlobStore, Publisher, RefConsumer
from services.runtime.settings import Settings
from services.runtime.shutdown import ShutdownSignal
from services.runtime.storage import ObjectMissingError, ObjectStore, StorageError

log = logging.getLogger(__name__)

BROKER_UNREACHABLE_EXIT = 3
"""Exit status of a frame service that gave up waiting for the broker (restart it)."""

Mode = Literal["live", "replay"]

FRAMES_PROCESSED = Counter(
    "depotwatch_frames_processed_total", "Frames handled by an estimator", ["service", "flow"]
)
FRAMES_SKIPPED = Counter(
    "depotwatch_frames_skipped_total",
    "Frames skipped in live mode because a newer frame of the camera was waiting",
    ["service", "flow", "camera_id"],
)
FRAMES_REJECTED = Counter(
    "depotwatch_frames_rejected_total",
    "Input messages dead-lettered (frame object missing or corrupt, unknown camera, the "
    "estimator failed on it)",
    ["service", "flow"],
)
OUTPUTS_PUBLISHED = Counter(
    "depotwatch_estimates_published_total",
    "Estimates acknowledged by the broker",
    ["service", "flow"],
)
STAGE_SECONDS = Histogram(
    "depotwatch_frame_stage_seconds",
    "Time per batch in each stage: fetch (waiting for S3 get + decode), handle (inference + "
    "mapping), publish (queueing outputs), ack_wait (blocked on broker acknowledgements)",
    ["service", "flow", "stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_SIZE = Histogram(
    "depotwatch_frame_batch_size",
    "Frames per handled batch",
    ["service", "flow"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
FRAME_LAG = Histogram(
    "depotwatch_frame_lag_seconds",
    "Capture-to-publish delay of a frame's estimate",
    ["service", "flow"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
LAST_BATCH = Gauge(
    "depotwatch_frame_last_batch_timestamp_seconds",
    "Unix time of the last finished loop iteration",
    ["service", "flow"],
)


In = TypeVar("In", bound=Message)
"""The message type a frame loop consumes (each one is about one stored frame)."""


def _always(_message: Message) -> bool:
    return True


@dataclass(frozen=True)
class FrameSource(Generic[In]):
    """What a frame loop consumes: a topic of messages each about one stored frame."""

    topic: str
    schema: type[In]
    ref: Callable[[In], FrameRef]
    """The frame a message is about."""
    needs_image: Callable[[In], bool] = _always
    """Whether the handler needs the frame's pixels; when not, the frame is not fetched."""


def frame_refs(topic: str = FrameRef.TOPIC) -> FrameSource[FrameRef]:
    """``frames.v1`` (or a copy of it): every frame is fetched."""
    return FrameSource(topic, FrameRef, _itself)


def _itself(ref: FrameRef) -> FrameRef:
    return ref


Work = tuple[In, DecodedFrame | None]
"""A consumed message and its frame (None where the source said the pixels are not needed)."""

FrameHandler = Callable[[Sequence[Work[In]]], Sequence[FrameOutcome]]
"""Pure per-batch handler: one outcome per message, in the same order."""

ImageHandler = Callable[[Sequence[DecodedFrame]], Sequence[FrameOutcome]]
"""Pure per-batch handler of decoded frames (every frame of the batch is fetched)."""


def on_images(handler: ImageHandler) -> FrameHandler[FrameRef]:
    """An :data:`ImageHandler` as the handler of a :func:`frame_refs` loop."""

    def handle(work: Sequence[Work[FrameRef]]) -> Sequence[FrameOutcome]:
        frames = [frame for _, frame in work if frame is not None]
        if len(frames) != len(work):
            raise RuntimeError("a frame of the batch was not fetched; its source must fetch all")
        return handler(frames)

    return handle


Fetched = tuple[Received[In], DecodedFrame | None]
FetchResult = DecodedFrame | None | StorageError | str
"""A decoded frame, None (not needed), an object store outage (retry), or why the frame is
unusable."""


@dataclass(frozen=True)
class FrameStreamConfig:
    """How the loop batches and selects frames."""

    service: str
    flow: str
    mode: Mode = "live"
    max_batch: int = 8
    max_wait_ms: int = 50
    live_window: int = 256
    """Refs looked at per poll in live mode, to find the newest frame of each camera."""
    live_skip_after_s: float = 1.0
    """Live mode: a frame with a newer one of its camera waiting is skipped once it is this old
    (since capture); a younger one is still estimated, batched with the newer one, so a short
    backlog is worked off instead of dropped. 0 skips every superseded frame."""
    fetch_threads: int = 4
    detector_input_px: int | None = None
    """Long side the handler's model resizes frames to; frames are decoded no larger than
    needed (JPEG reduced decoding). None: full resolution (e.g. for OCR crops)."""
    max_in_flight: int = 4
    """Batches published but not yet acknowledged before the loop waits for the broker."""
    ack_timeout_s: float = 30.0
    storage_retry_s: float = 1.0
    stall_after_s: float = 60.0
    """/healthz fails when frames wait and none was finished for this long."""
    max_failures_per_minute: int = 20
    """Messages the handler may fail on in a minute (each dead-lettered) before the service
    exits: more is a broken estimator, not bad input (the backstop behind its self-test)."""
    dependency_grace_s: float = 60.0
    """/healthz fails when the broker or the object store is unreachable for this long."""


@dataclass(frozen=True)
class Selection(Generic[In]):
    """Messages of one poll split into the ones to process and the ones skipped as stale."""

    keep: list[Received[In]]
    skipped: list[Received[In]]


def late(frame: FrameRef, now: datetime | None, skip_after_s: float) -> bool:
    """Whether a superseded frame is old enough to skip (``now`` None: always)."""
    return now is None or (now - frame.captured_at).total_seconds() >= skip_after_s


def select_frames(
    received: Sequence[Received[In]],
    mode: Mode,
    ref: Callable[[In], FrameRef],
    now: datetime | None = None,
    skip_after_s: float = 0.0,
) -> Selection[In]:
    """Replay keeps everything in order; live keeps the newest frame of each camera, and an
    older one only while it is younger than ``skip_after_s`` at ``now`` (None: never)."""
    if mode == "replay":
        return Selection(keep=list(received), skipped=[])
    newest: dict[str, Received[In]] = {}
    for r in received:
        frame = ref(r.message)
        cur = newest.get(frame.camera_id)
        if cur is None or (frame.seq, r.offset) > (ref(cur.message).seq, cur.offset):
            newest[frame.camera_id] = r
    kept = {id(r) for r in newest.values()}
    kept |= {id(r) for r in received if not late(ref(r.message), now, skip_after_s)}
    return Selection(
        keep=[r for r in received if id(r) in kept],
        skipped=[r for r in received if id(r) not in kept],
    )


@dataclass
class _InFlight(Generic[In]):
    """A handled batch whose outputs are published and not yet all acknowledged."""

    received: list[Received[In]]
    rejected: list[tuple[Received[In], str]]
    handled: int
    waiting: int
    errors: list[str] = field(default_factory=list)
    captured: list[datetime] = field(default_factory=list)


@dataclass
class _Polled(Generic[In]):
    """One poll's messages: all of them, the ones to process (being fetched) and the skipped."""

    received: list[Received[In]]
    keep: list[Received[In]]
    skipped: list[Received[In]]
    futures: list[Future[FetchResult]]


class FrameStream(Generic[In]):
    """Runs a :data:`FrameHandler` over a :class:`FrameSource` with at-least-once delivery."""

    def __init__(
        self,
        config: FrameStreamConfig,
        source: FrameSource[In],
        consumer: RefConsumer,
        producer: Publisher,
        store: BlobStore,
        handler: FrameHandler[In],
        self_test: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.self_test = self_test  # known-good input through the handler's parts
        self.consumer = consumer
        self.producer = producer
        self.store = store
        self.handler = handler
        self._pool = ThreadPoolExecutor(config.fetch_threads, thread_name_prefix="frame-fetch")
        self._labels = (config.service, config.flow)
        self.last_progress = time.monotonic()
        self.processed = 0
        self.skipped = 0
        self.rejected = 0
        self._ahead: _Polled[In] | None = None
        self._failures: deque[float] = deque()
        self._in_flight: deque[_InFlight[In]] = deque()

    # -- one iteration ---------------------------------------------------------------------
    def _poll(self, timeout: float) -> _Polled[In] | None:
        """Poll messages, pick the ones to process and start fetching their frames."""
        cfg = self.config
        want = cfg.live_window if cfg.mode == "live" else cfg.max_batch
        received = self.consumer.poll_batch(want, timeout)
        if not received:
            return None
        selection = select_frames(
            received, cfg.mode, self.source.ref, utc_now(), cfg.live_skip_after_s
        )
        futures = [self._pool.submit(self._fetch_one, r) for r in selection.keep]
        return _Polled(received, selection.keep, selection.skipped, futures)

    def run_once(self, shutdown: ShutdownSignal | None = None) -> int:
        """Poll, process and acknowledge one batch; returns how many frames got estimates.

        While a batch is being handled, the refs already waiting are polled and their frames
        fetched in the background (read-ahead), so S3 and decoding overlap inference.
        """
        current = self._ahead or self._poll(self.config.max_wait_ms / 1000.0)
        self._ahead = None
        self.last_progress = time.monotonic()
        LAST_BATCH.labels(*self._labels).set_to_current_time()
        if current is None:
            self._settle()
            return 0
        self._ahead = self._poll(0.0)
        if self.config.mode == "live" and self._ahead is not None:
            self._skip_superseded(
                current, self._ahead, self.source.ref, utc_now(), self.config.live_skip_after_s
            )
        for r in current.skipped:
            FRAMES_SKIPPED.labels(*self._labels, self.source.ref(r.message).camera_id).inc()
        self.skipped += len(current.skipped)
        handled = 0
        pending: list[tuple[Received[In], Message]] = []
        rejected: list[tuple[Received[In], str]] = []
        batch = self.config.max_batch
        for start in range(0, len(current.keep), batch):
            chunk = current.keep[start : start + batch]
            futures = current.futures[start : start + batch]
            frames, chunk_rejected = self._collect(chunk, futures, shutdown)
            if frames is None:
                return 0  # shutdown while the store was down: nothing of it is marked done
            rejected += chunk_rejected
            if not frames:
                continue
            t0 = time.perf_counter()
            outcomes = self._handle([(r.message, f) for r, f in frames])
            STAGE_SECONDS.labels(*self._labels, "handle").observe(time.perf_counter() - t0)
            BATCH_SIZE.labels(*self._labels).observe(len(frames))
            if len(outcomes) != len(frames):
                raise RuntimeError(
                    f"handler returned {len(outcomes)} outcomes for {len(frames)} frames"
                )
            for (r, _), outcome in zip(frames, outcomes, strict=True):
                if isinstance(outcome, Rejected):
                    rejected.append((r, outcome.reason))
                else:
                    pending += [(r, m) for m in outcome]
                    handled += 1
        self._publish(current.received, pending, rejected, handled)
        self._settle()
        return handled

    def _handle(self, work: Sequence[Work[In]]) -> Sequence[FrameOutcome]:
        """The handler's outcomes; a message it fails on is rejected alone (dead-lettered with
        the error), so one bad message cannot crash the service again on every restart.

        Whether the message or the estimator is at fault is asked of the estimator itself: when
        its self-test (known-good input through the same parts) fails too, it is broken, and the
        error is raised (the service exits, is restarted, and nothing of the batch is marked
        done) instead of dead-lettering every message. Without a self-test, more than
        ``max_failures_per_minute`` failures say the same.
        """
        try:
            return self.handler(work)
        except Exception as exc:
            if len(work) > 1:
                return [outcome for item in work for outcome in self._handle([item])]
            if self._broken():
                raise
            frame = self.source.ref(work[0][0])
            log.exception(
                "the estimator failed on a message; dead-lettering it",
                extra={"flow": self.config.flow, "camera_id": frame.camera_id, "seq": frame.seq},
            )
            return [Rejected(f"the estimator failed on this message: {exc!r}")]

    def _broken(self) -> bool:
        """After a failure on one message: is the estimator broken rather than the message?"""
        now = time.monotonic()
        self._failures.append(now)
        while self._failures and now - self._failures[0] > 60.0:
            self._failures.popleft()
        if len(self._failures) > self.config.max_failures_per_minute:
            log.error("the estimator failed on too many messages in a minute; exiting")
            return True
        if self.self_test is None:
            return False
        try:
            self.self_test()
        except Exception:
            log.exception("the estimator fails its self-test too: it is broken; exiting")
            return True
        return False

    @staticmethod
    def _skip_superseded(
        current: _Polled[In],
        ahead: _Polled[In],
        ref: Callable[[In], FrameRef],
        now: datetime | None = None,
        skip_after_s: float = 0.0,
    ) -> None:
        """Live mode: a frame of a camera with a newer frame already read ahead is not processed
        now, once it is ``skip_after_s`` old at ``now`` (None: at once)."""
        newest = {ref(r.message).camera_id: ref(r.message).seq for r in ahead.keep}
        keep, futures = [], []
        for r, fut in zip(current.keep, current.futures, strict=True):
            frame = ref(r.message)
            if frame.seq < newest.get(frame.camera_id, -1) and late(frame, now, skip_after_s):
                current.skipped.append(r)
                fut.cancel()
            else:
                keep.append(r)
                futures.append(fut)
        current.keep, current.futures = keep, futures

    def _collect(
        self,
        chunk: Sequence[Received[In]],
        futures: Sequence[Future[FetchResult]],
        shutdown: ShutdownSignal | None,
    ) -> tuple[list[Fetched[In]] | None, list[tuple[Received[In], str]]]:
        """Wait for a chunk's fetches; re-fetch while the store is down (None: shutdown)."""
        t0 = time.perf_counter()
        results = [f.result() for f in futures]
        while any(isinstance(res, StorageError) for res in results):
            outage = next(res for res in results if isinstance(res, StorageError))
            log.error(
                "object store unavailable; retrying the batch",
                extra={"error": str(outage), "flow": self.config.flow},
            )
            if shutdown is not None and shutdown.wait(self.config.storage_retry_s):
                return None, []
            if shutdown is None:
                time.sleep(self.config.storage_retry_s)
            results = list(self._pool.map(self._fetch_one, chunk))
        # Only the wait shows here: read-ahead fetches that finished during inference are free.
        STAGE_SECONDS.labels(*self._labels, "fetch").observe(time.perf_counter() - t0)
        frames: list[Fetched[In]] = []
        rejected: list[tuple[Received[In], str]] = []
        for r, res in zip(chunk, results, strict=True):
            if res is None or isinstance(res, DecodedFrame):
                frames.append((r, res))
            else:
                rejected.append((r, str(res)))
        return frames, rejected

    def _fetch_one(self, r: Received[In]) -> FetchResult:
        if not self.source.needs_image(r.message):
            return None
        ref = self.source.ref(r.message)
        try:
            data = self.store.get(ref.key, bucket=ref.bucket)
        except ObjectMissingError as exc:
            return f"frame object missing: {exc}"
        except StorageError as exc:
            return exc
        reduction = decode_reduction(ref.width, ref.height, self.config.detector_input_px)
        try:
            return decode_frame(ref, data, reduction=reduction)
        except FrameDecodeError as exc:
            return f"frame object corrupt: {exc.reason}"

    def _publish(
        self,
        received: list[Received[In]],
        pending: Sequence[tuple[Received[In], Message]],
        rejected: list[tuple[Received[In], str]],
        handled: int,
    ) -> None:
        """Publish a batch's outputs without waiting; acks are counted as they arrive.

        Waiting for every batch's acks would put a broker round trip between batches; instead
        the batch joins the in-flight queue and :meth:`_settle` marks it done once all of its
        outputs (and those of every batch before it) are acknowledged.
        """
        batch = _InFlight(received, rejected, handled, waiting=len(pending))

        def delivered(err: KafkaError | None, _msg: KafkaMessage) -> None:
            batch.waiting -= 1
            if err is not None:
                batch.errors.append(str(err))

        t0 = time.perf_counter()
        for _, message in pending:
            self.producer.publish(message, self.config.flow, on_delivery=delivered)
        STAGE_SECONDS.labels(*self._labels, "publish").observe(time.perf_counter() - t0)
        batch.captured = [self.source.ref(r.message).captured_at for r, _ in pending]
        self._in_flight.append(batch)
        # Bounded: a broker that stops acknowledging stops the loop instead of piling up work.
        if len(self._in_flight) > self.config.max_in_flight:
            self._wait_for_front(self.config.ack_timeout_s)

    def _wait_for_front(self, timeout_s: float) -> None:
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout_s
        while self._in_flight and self._in_flight[0].waiting > 0:
            if time.monotonic() > deadline:
                front = self._in_flight[0]
                raise ProduceError(
                    f"{front.waiting} estimates not acknowledged within {timeout_s:.0f}s; "
                    "offsets not committed, the frames will be processed again after restart"
                )
            self.producer.poll(0.05)
        STAGE_SECONDS.labels(*self._labels, "ack_wait").observe(time.perf_counter() - t0)
        self._settle()

    def _settle(self) -> None:
        """Mark done, in order, every batch at the front whose outputs are all acknowledged."""
        self.producer.poll(0)
        while self._in_flight and self._in_flight[0].waiting <= 0:
            batch = self._in_flight.popleft()
            if batch.errors:
                raise ProduceError(
                    f"{len(batch.errors)} estimates were rejected by the broker "
                    f"({batch.errors[0]}); offsets not committed, the frames will be processed "
                    "again after restart"
                )
            for r, reason in batch.rejected:
                self.consumer.dead_letter(r.raw, reason, mark_done=False)
                FRAMES_REJECTED.labels(*self._labels).inc()
            self.rejected += len(batch.rejected)
            # Offsets in order, after every output is acknowledged (see module docstring).
            for r in sorted(batch.received, key=lambda x: (x.topic, x.partition, x.offset)):
                self.consumer.done(r)
            FRAMES_PROCESSED.labels(*self._labels).inc(batch.handled)
            OUTPUTS_PUBLISHED.labels(*self._labels).inc(len(batch.captured))
            self.processed += batch.handled
            now = utc_now()
            for captured in batch.captured:
                FRAME_LAG.labels(*self._labels).observe((now - captured).total_seconds())

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every published output is acknowledged and its frames marked done."""
        timeout = self.config.ack_timeout_s if timeout_s is None else timeout_s
        while self._in_flight:
            self._wait_for_front(timeout)

    # -- the loop --------------------------------------------------------------------------
    def run(self, shutdown: ShutdownSignal) -> None:
        """Process batches until shutdown is requested; then commit and close the clients."""
        try:
            while not shutdown.requested:
                self.run_once(shutdown)
        finally:
            self.close()

    def close(self) -> None:
        """Wait for outstanding acks, commit what is done, leave the group.

        A batch read ahead but not processed is not marked done: it is consumed again.
        """
        self._ahead = None
        self._pool.shutdown(wait=True, cancel_futures=True)
        try:
            self.flush()
        except ProduceError as exc:
            log.error("estimates not acknowledged at shutdown", extra={"error": str(exc)})
        self.consumer.close()
        self.producer.close()

    def health(self, stall_after_s: float = 60.0) -> tuple[bool, str]:
        """Health check: the loop has come round recently."""
        age = time.monotonic() - self.last_progress
        ok = age < stall_after_s
        return ok, (
            f"last poll {age:.1f}s ago; processed {self.processed}, skipped {self.skipped}, "
            f"rejected {self.rejected}"
        )


def stream_summary(stream: FrameStream[Any]) -> dict[str, Any]:
    """Counters of a stream, for logs at shutdown."""
    return {"processed": stream.processed, "skipped": stream.skipped, "rejected": stream.rejected}


def connect_frame_stream(
    settings: Settings,
    config: FrameStreamConfig,
    source: FrameSource[In],
    handler: FrameHandler[In],
    consumer_overrides: Mapping[str, Any] | None = None,
    self_test: Callable[[], None] | None = None,
) -> FrameStream[In]:
    """A frame loop on ``source`` in group ``<service>.<flow>``, publishing its outputs."""
    client = f"{config.service}.{config.flow}"
    producer = MessageProducer(settings.kafka, client_id=client)
    consumer = MessageConsumer(
        settings.kafka,
        group_id=client,
        topics={source.topic: source.schema},
        service=client,
        dead_letters=producer,
        overrides=consumer_overrides,
        defer_dead_letter_offsets=True,  # batches and read-ahead are in flight
    )
    return FrameStream(
        config, source, consumer, producer, ObjectStore(settings.s3), handler, self_test
    )


def frame_stream_health(
    stream: FrameStream[Any], settings: Settings
) -> tuple[Health, ConsumerLagMonitor]:
    """The /healthz checks of a frame service, and the (started) lag monitor they read.

    ``loop``: the loop comes round. ``progress``: frames wait (consumer-group lag) and none
    was finished for ``stall_after_s``, or the lag could not be measured for
    ``dependency_grace_s``, fails it (field failure: a consumer left stuck by a broker restart
    processed nothing for 9 minutes while its loop, hence /healthz, looked fine).
    ``object_store``: the bucket is reachable, with the same grace.
    """
    lag = ConsumerLagMonitor.of_group(settings.kafka, stream.consumer.group_id).start()
    health = Health()
    health.add("loop", stream.health)
    health.add(
        "progress",
        ProgressWatch(
            lambda: stream.processed + stream.skipped + stream.rejected,
            lambda: lag.backlog({stream.source.topic}),
            stall_after_s=stream.config.stall_after_s,
            unreachable_after_s=stream.config.dependency_grace_s,
        ).check,
    )
    # An unreachable store is reported, not restarted: a restart cannot bring it back.
    health.add(
        "object_store",
        with_grace(stream.store.ping, stream.config.dependency_grace_s),
        restart=False,
    )
    return health, lag


def serve_frame_stream(
    stream: FrameStream[Any], settings: Settings, shutdown: ShutdownSignal
) -> None:
    """Serve /metrics and /healthz, run the loop until shutdown, then stop serving."""
    health, lag = frame_stream_health(stream, settings)
    server = ObservabilityServer(health, settings.http_host, settings.http_port).start()
    try:
        stream.run(shutdown)
    except (ProduceError, KafkaUnavailableError) as exc:
        # Nothing unacknowledged was marked done: a restart (the supervisor's or k8s') picks
        # the same frames up again. One line, not a traceback.
        log.error(
            "broker unreachable; exiting so this service is restarted",
            extra={"flow": stream.config.flow, "error": str(exc)},
        )
        raise SystemExit(BROKER_UNREACHABLE_EXIT) from None
    finally:
        server.stop()
        lag.stop()
        log.info("stopped", extra={"flow": stream.config.flow, **stream_summary(stream)})
