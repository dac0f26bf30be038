"""In-memory stand-ins for the broker and the object store, with faults to inject.

They follow the Protocols of ``services/runtime/ports.py`` (:class:`Publisher`,
:class:`RefConsumer`, :class:`BlobStore`) so the failure branches of the frame loops are tested
exactly and fast: a broker that rejects a message, one that never acknowledges (time out), one
that fails after N messages; a store that is down for N calls, or from the Nth call on; a missing
object. The real clients are tested against the real servers in the integration tests.
:class:`Clock` is watchdog time a test moves by hand.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError

from schemas.base import Message
from services.runtime.kafka import ProduceError, Received
from services.runtime.ports import DeliveryCallback
from services.runtime.settings import S3Settings
from services.runtime.storage import ObjectMissingError, StorageError, StoredObject


class Clock:
    """Watchdog time the test moves by hand (no sleeping until a watchdog expires)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class PublishFaults:
    """How the fake broker answers. Message numbers count from 0 in publish order."""

    reject: set[int] = field(default_factory=set)
    """These messages are refused (their callback gets an error)."""
    fail_after: int | None = None
    """Every message from this number on is refused."""
    acknowledge: bool = True
    """False: nothing is ever acknowledged (a broker that stopped answering)."""
    error_code: int = KafkaError._MSG_TIMED_OUT
    """What a refusal reports, e.g. ``KafkaError.PRODUCER_FENCED``."""


class FakePublisher:
    """A :class:`~services.runtime.ports.Publisher` whose broker is a list."""

    def __init__(self, faults: PublishFaults | None = None) -> None:
        self.faults = faults or PublishFaults()
        self.published: list[tuple[str | None, Message]] = []
        """(flow, message) in publish order, acknowledged or not."""
        self.acknowledged: list[Message] = []
        self._waiting: deque[tuple[int, DeliveryCallback | None]] = deque()
        self.closed = False
        self.lock = threading.Lock()

    def publish(
        self,
        message: Message,
        flow: str | None = None,
        on_delivery: DeliveryCallback | None = None,
        topic: str | None = None,
    ) -> None:
        with self.lock:
            self._waiting.append((len(self.published), on_delivery))
            self.published.append((flow, message))

    def _refused(self, n: int) -> bool:
        after = self.faults.fail_after
        return n in self.faults.reject or (after is not None and n >= after)

    def poll(self, timeout: float = 0.0) -> int:
        ready: list[tuple[int, DeliveryCallback | None]] = []
        if self.faults.acknowledge:
            with self.lock:
                ready, self._waiting = list(self._waiting), deque()
        if not ready:
            # A real poll blocks up to ``timeout`` for a report; a loop polling an idle fake
            # must not spin.
            time.sleep(min(timeout, 0.01))
            return 0
        for n, callback in ready:
            err = KafkaError(self.faults.error_code) if self._refused(n) else None
            if err is None:
                self.acknowledged.append(self.published[n][1])
            if callback is not None:
                callback(err, Any)  # type: ignore[arg-type]
        return len(ready)

    def hold(self) -> list[tuple[int, DeliveryCallback | None]]:
        """Take the messages waiting for an ack out of the broker's hands (to ack later)."""
        with self.lock:
            held, self._waiting = list(self._waiting), deque()
        return held

    def release(self, held: list[tuple[int, DeliveryCallback | None]]) -> None:
        """Hand held messages back; the next poll acknowledges them."""
        with self.lock:
            self._waiting.extend(held)

    def flush(self, timeout: float = 30.0) -> int:
        self.poll()
        return len(self._waiting)

    def purge(self) -> None:
        with self.lock:
            dropped, self._waiting = list(self._waiting), deque()
        for _, callback in dropped:
            if callback is not None:
                callback(KafkaError(KafkaError._PURGE_QUEUE), Any)  # type: ignore[arg-type]

    def close(self, timeout: float = 30.0) -> None:
        self.flush(timeout)
        self.closed = True

    def __len__(self) -> int:
        return len(self._waiting)


class FakeConsumer:
    """A :class:`~services.runtime.ports.RefConsumer` over a fixed list of messages.

    ``raw`` of each received message is its offset; ``done`` and ``dead`` record what the loop
    handed back. ``dead_letter_fails`` makes dead-lettering raise (the dead-letter topic refuses).
    """

    def __init__(self, messages: Iterable[Message], topic: str = "frames.v1") -> None:
        self.topic = topic
        self._waiting: deque[Received[Any]] = deque()
        self._next_offset = 0
        self.group_id = "depotwatch.test.prod"
        self.done_offsets: list[int] = []
        self.dead: list[tuple[int, str]] = []
        self.dead_letter_fails = False
        self.closed = False
        self.add(messages)

    def add(self, messages: Iterable[Message]) -> None:
        """More messages arrive (offsets go on from the last one)."""
        for m in messages:
            n = self._next_offset
            self._next_offset += 1
            self._waiting.append(
                Received(
                    message=m,
                    topic=self.topic,
                    partition=0,
                    offset=n,
                    key=None,
                    timestamp_ms=0,
                    raw=n,
                )
            )

    def poll_batch(self, max_messages: int, timeout: float) -> list[Received[Any]]:
        out = []
        while self._waiting and len(out) < max_messages:
            out.append(self._waiting.popleft())
        return out

    def done(self, received: Received[Any]) -> None:
        self.done_offsets.append(received.offset)

    def dead_letter(self, msg: Any, reason: str, mark_done: bool = True) -> None:
        if self.dead_letter_fails:
            raise ProduceError("dead-letter topic refused the message (injected)")
        self.dead.append((int(msg), reason))
        if mark_done:
            self.done_offsets.append(int(msg))

    def close(self) -> None:
        self.closed = True


class FakeStore:
    """A :class:`~services.runtime.ports.BlobStore` in a dict.

    ``down``: every call fails until switched back. ``fail_next``: the next N calls fail.
    ``fail_from``: every call from the Nth on fails (calls count from 0).
    """

    def __init__(self, settings: S3Settings | None = None) -> None:
        self.settings = settings or S3Settings()
        self.objects: dict[tuple[str, str], bytes] = {}
        self.down = False
        self.fail_next = 0
        self.fail_from: int | None = None
        self.calls = 0
        self.gets: list[str] = []
        self.puts: list[str] = []
        self.lock = threading.Lock()

    def _maybe_fail(self, what: str) -> None:
        with self.lock:
            n = self.calls
            self.calls += 1
            failing = self.down or self.fail_next > 0
            if self.fail_next > 0:
                self.fail_next -= 1
        if failing or (self.fail_from is not None and n >= self.fail_from):
            raise StorageError(f"object store test: {what} failed (injected)")

    def put(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> StoredObject:
        self._maybe_fail(f"put {key}")
        bucket = self.settings.bucket
        with self.lock:
            self.objects[(bucket, key)] = data
            self.puts.append(key)
        return StoredObject(bucket, key, len(data), hashlib.sha256(data).hexdigest(), "etag")

    def get(self, key: str, bucket: str | None = None) -> bytes:
        self._maybe_fail(f"get {key}")
        self.gets.append(key)
        try:
            return self.objects[(bucket or self.settings.bucket, key)]
        except KeyError:
            raise ObjectMissingError(f"{bucket}/{key}: no such object") from None

    def ping(self) -> tuple[bool, str]:
        return (not self.down), ("bucket present" if not self.down else "down (injected)")

    def ensure_bucket(self, bucket: str | None = None) -> bool:
        self._maybe_fail("ensure bucket")
        return False

    def expiry_days(self) -> int | None:
        return self.settings.frame_retention_days

    def set_expiry(self, days: int, prefix: str = "") -> None:
        self._maybe_fail("set expiry")
