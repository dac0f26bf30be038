"""Every error branch of the estimator loop (FrameStream), with fakes that inject the faults.

At least once: a frame's offset is marked done only after every output of its batch, and of
every batch before it, is acknowledged; a broker that refuses or stops answering stops the loop
with nothing of the unacknowledged work marked done; an unusable frame is dead-lettered and
the loop goes on; a store outage is retried, not blamed on the frame.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import cv2
import numpy as np
import pytest
from fakes import FakeConsumer, FakePublisher, FakeStore, PublishFaults

from schemas.frames import FrameRef
from services.runtime.frame_stream import FrameStream, FrameStreamConfig, frame_refs, on_images
from services.runtime.frames import DecodedFrame, FrameOutcome, Rejected
from services.runtime.kafka import ProduceError
from services.runtime.shutdown import ShutdownSignal

AT = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
BUCKET = "depotwatch-frames"
JPEG = bytes(cv2.imencode(".jpg", np.full((48, 64, 3), 90, np.uint8))[1])


def ref(camera_id: str, seq: int, data: bytes = JPEG) -> FrameRef:
    return FrameRef(
        camera_id=camera_id,
        seq=seq,
        captured_at=AT + timedelta(seconds=seq),
        bucket=BUCKET,
        key=f"{camera_id}/{seq}.jpg",
        width=64,
        height=48,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def echo(frames: Sequence[DecodedFrame]) -> list[FrameOutcome]:
    """A handler that publishes each frame's ref back: one output per frame."""
    return [[f.ref] for f in frames]


Rig = tuple[FrameStream[FrameRef], FakeConsumer, FakePublisher, FakeStore]


@pytest.fixture
def rig() -> Callable[..., Rig]:
    def make(
        refs: Sequence[FrameRef],
        stored: Sequence[FrameRef] | None = None,
        faults: PublishFaults | None = None,
        handler: Callable[[Sequence[DecodedFrame]], Sequence[FrameOutcome]] = echo,
        **config: Any,
    ) -> Rig:
        store = FakeStore()
        for r in refs if stored is None else stored:
            store.objects[(r.bucket, r.key)] = JPEG
        consumer = FakeConsumer(refs)
        producer = FakePublisher(faults)
        cfg = FrameStreamConfig(
            service="test",
            flow="prod",
            **{"mode": "replay", "ack_timeout_s": 0.2, "storage_retry_s": 0.01, **config},
        )
        stream = FrameStream(cfg, frame_refs(), consumer, producer, store, on_images(handler))
        return stream, consumer, producer, store

    return make


def test_offsets_are_marked_done_only_after_the_outputs_are_acknowledged(
    rig: Callable[..., Rig],
) -> None:
    stream, consumer, producer, _ = rig([ref("a", 1), ref("a", 2)], faults=PublishFaults())
    producer.faults.acknowledge = False
    assert stream.run_once() == 2
    assert len(producer.published) == 2
    assert consumer.done_offsets == []  # published, not yet acknowledged
    producer.faults.acknowledge = True
    assert stream.run_once() == 0  # nothing new: settles what was acknowledged
    assert consumer.done_offsets == [0, 1]
    assert stream.processed == 2


def test_a_batch_is_not_done_before_the_batches_in_front_of_it(rig: Callable[..., Rig]) -> None:
    stream, consumer, producer, _ = rig([ref("a", 1), ref("a", 2)], max_batch=1)
    producer.faults.acknowledge = False
    stream.run_once()  # batch 1 (offset 0) in flight
    held = producer.hold()
    stream.run_once()  # batch 2 (offset 1) in flight
    # Batch 2 is acknowledged first: still nothing may be marked done.
    producer.faults.acknowledge = True
    producer.poll()
    stream.run_once()
    assert consumer.done_offsets == []
    producer.release(held)
    stream.run_once()
    assert consumer.done_offsets == [0, 1]


def test_a_refused_output_stops_the_loop_with_nothing_marked_done(
    rig: Callable[..., Rig],
) -> None:
    stream, consumer, _, _ = rig([ref("a", 1), ref("b", 1)], faults=PublishFaults(reject={1}))
    with pytest.raises(ProduceError, match="rejected by the broker"):
        stream.run_once()
    assert consumer.done_offsets == []
    assert stream.processed == 0


def test_a_broker_failing_after_n_messages_stops_the_loop_at_that_batch(
    rig: Callable[..., Rig],
) -> None:
    refs = [ref("a", i) for i in range(4)]
    stream, consumer, _, _ = rig(refs, faults=PublishFaults(fail_after=2), max_batch=1)
    stream.run_once()
    stream.run_once()
    with pytest.raises(ProduceError):
        stream.run_once()
    assert consumer.done_offsets == [0, 1]


def test_batches_in_flight_are_bounded_when_the_broker_stops_answering(
    rig: Callable[..., Rig],
) -> None:
    refs = [ref("a", i) for i in range(6)]
    stream, consumer, producer, _ = rig(
        refs, faults=PublishFaults(acknowledge=False), max_batch=1, max_in_flight=2
    )
    stream.run_once()
    stream.run_once()
    with pytest.raises(ProduceError, match="not acknowledged within"):
        stream.run_once()
    assert len(producer.published) == 3  # the third batch waited, then gave up
    assert consumer.done_offsets == []


def test_missing_and_corrupt_objects_are_dead_lettered_and_the_loop_goes_on(
    rig: Callable[..., Rig],
) -> None:
    good, missing, corrupt, last = ref("a", 1), ref("b", 1), ref("c", 1), ref("d", 1)
    stream, consumer, producer, store = rig(
        [good, missing, corrupt, last], stored=[good, corrupt, last]
    )
    store.objects[(corrupt.bucket, corrupt.key)] = JPEG[:-10]  # truncated
    assert stream.run_once() == 2
    assert [(o, reason.split(":")[0]) for o, reason in consumer.dead] == [
        (1, "frame object missing"),
        (2, "frame object corrupt"),
    ]
    assert consumer.done_offsets == [0, 1, 2, 3]
    assert [m for _, m in producer.published] == [good, last]
    assert (stream.processed, stream.rejected) == (2, 2)


def test_a_frame_the_handler_rejects_is_dead_lettered_with_its_reason(
    rig: Callable[..., Rig],
) -> None:
    def handler(frames: Sequence[DecodedFrame]) -> list[FrameOutcome]:
        return [Rejected("unknown camera x") if f.ref.camera_id == "x" else [f.ref] for f in frames]

    stream, consumer, producer, _ = rig([ref("x", 1), ref("a", 1)], handler=handler)
    assert stream.run_once() == 1
    assert consumer.dead == [(0, "unknown camera x")]
    assert consumer.done_offsets == [0, 1]
    assert len(producer.published) == 1


def test_a_handler_that_loses_frames_is_an_error(rig: Callable[..., Rig]) -> None:
    stream, consumer, _, _ = rig([ref("a", 1), ref("a", 2)], handler=lambda frames: [[]])
    with pytest.raises(RuntimeError, match="1 outcomes for 2 frames"):
        stream.run_once()
    assert consumer.done_offsets == []


def test_a_store_outage_is_retried_and_not_blamed_on_the_frame(rig: Callable[..., Rig]) -> None:
    stream, consumer, producer, store = rig([ref("a", 1), ref("b", 1)])
    store.fail_next = 5  # both first fetches and a few retries fail
    assert stream.run_once(ShutdownSignal()) == 2
    assert consumer.dead == []
    assert len(producer.published) == 2
    assert store.gets.count("a/1.jpg") == 1


def test_shutdown_during_a_store_outage_marks_nothing_done(rig: Callable[..., Rig]) -> None:
    stream, consumer, producer, store = rig([ref("a", 1)])
    store.down = True
    shutdown = ShutdownSignal()
    shutdown.request()
    assert stream.run_once(shutdown) == 0
    assert consumer.done_offsets == []
    assert consumer.dead == []
    assert producer.published == []


def test_live_mode_processes_the_newest_frame_of_a_camera_and_counts_the_rest(
    rig: Callable[..., Rig],
) -> None:
    stream, consumer, producer, _ = rig([ref("a", 1), ref("a", 2), ref("b", 5)], mode="live")
    assert stream.run_once() == 2
    assert [(m.camera_id, m.seq) for _, m in producer.published] == [("a", 2), ("b", 5)]
    assert stream.skipped == 1
    assert consumer.done_offsets == [0, 1, 2]  # the skipped one is done too


def test_live_mode_skips_a_frame_superseded_by_one_read_ahead(rig: Callable[..., Rig]) -> None:
    stream, consumer, producer, _ = rig([ref("a", 1), ref("a", 2)], mode="live", live_window=1)
    assert stream.run_once() == 0  # a/1 is superseded by a/2, read ahead meanwhile
    assert stream.run_once() == 1
    assert [m.seq for _, m in producer.published] == [2]
    assert stream.skipped == 1
    assert consumer.done_offsets == [0, 1]


def test_close_gives_up_on_acks_logs_and_still_closes_the_clients(
    rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    stream, consumer, producer, _ = rig([ref("a", 1)], faults=PublishFaults(acknowledge=False))
    stream.run_once()
    with caplog.at_level(logging.ERROR):
        stream.close()
    assert "estimates not acknowledged at shutdown" in caplog.text
    assert consumer.closed
    assert producer.closed
    assert consumer.done_offsets == []


def test_a_failing_dead_letter_stops_the_loop_before_the_offset_moves(
    rig: Callable[..., Rig],
) -> None:
    stream, consumer, _, _ = rig([ref("a", 1)], stored=[])
    consumer.dead_letter_fails = True
    with pytest.raises(ProduceError, match="dead-letter"):
        stream.run_once()
    assert consumer.done_offsets == []
