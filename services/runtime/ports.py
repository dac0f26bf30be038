"""What the frame loops need of the broker, the object store and a detector, as Protocols.

:class:`~services.runtime.frame_stream.FrameStream` and the aggregator are written against these,
so their failure branches (a broker that rejects or never acknowledges, a store that is down, an
object that is missing) are tested with in-memory fakes that inject those faults
(``tests/fakes.py``), and the real clients (:class:`~services.runtime.kafka.
MessageProducer`, :class:`~services.runtime.kafka.MessageConsumer`,
:class:`~services.runtime.storage.ObjectStore`) are tested against the real servers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from confluent_kafka import KafkaError
    from confluent_kafka import Message as KafkaMessage

    from schemas.base import Message
    from schemas.estimates import Detection
    from services.runtime.frames import Image
    from services.runtime.kafka import Received
    from services.runtime.settings import S3Settings
    from services.runtime.storage import StoredObject

DeliveryCallback = Callable[["KafkaError | None", "KafkaMessage"], None]
"""``on_delivery(err, msg)``: err is None once the broker acknowledged the message."""


class BatchDetector(Protocol):
    """Turns a batch of BGR images into detections, one list per image (the YOLO detector, or
    a stand-in that reads the simulator's truth)."""

    def detect(self, images: Sequence[Image]) -> list[list[Detection]]:
        """Detections of each image, in input order."""


class Publisher(Protocol):
    """Publishes messages asynchronously; acknowledgements arrive through ``poll``."""

    def publish(
        self,
        message: Message,
        flow: str | None = None,
        on_delivery: DeliveryCallback | None = None,
        topic: str | None = None,
    ) -> None:
        """Queue ``message`` on its topic (of ``flow``); ``on_delivery`` fires from poll."""

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery callbacks for up to ``timeout`` seconds; returns how many fired."""

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for every queued message; returns how many are still undelivered."""

    def purge(self) -> None:
        """Drop every queued and in-flight message; each one's callback reports an error."""

    def close(self, timeout: float = 30.0) -> None:
        """Flush and release the client."""

    def __len__(self) -> int:
        """Messages queued or in flight."""


class RefConsumer(Protocol):
    """A consumer group member that hands out valid messages and takes them back as done."""

    @property
    def group_id(self) -> str:
        """The consumer group."""

    def poll_batch(self, max_messages: int, timeout: float) -> list[Received[Any]]:
        """Up to ``max_messages`` valid messages (bad ones are dead-lettered on the way)."""

    def done(self, received: Received[Any]) -> None:
        """Mark a message processed; its offset is committed with the next commit."""

    def dead_letter(self, msg: KafkaMessage, reason: str, mark_done: bool = True) -> None:
        """Publish ``msg`` with ``reason`` to the dead-letter topic (waits for the ack)."""

    def close(self) -> None:
        """Commit what is done and leave the group."""


class BlobStore(Protocol):
    """The object store as the frame loops use it."""

    @property
    def settings(self) -> S3Settings:
        """Endpoint, bucket and frame retention."""

    def put(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> StoredObject:
        """Store bytes under ``key``; raises StorageError when the store is unavailable."""

    def get(self, key: str, bucket: str | None = None) -> bytes:
        """Bytes of an object; ObjectMissingError if absent, StorageError if unavailable."""

    def ping(self) -> tuple[bool, str]:
        """Whether the bucket is reachable, and a line saying so."""

    def ensure_bucket(self, bucket: str | None = None) -> bool:
        """Create the bucket if missing; True if it was created."""

    def expiry_days(self) -> int | None:
        """Days after which frames expire, or None without a rule."""

    def set_expiry(self, days: int, prefix: str = "") -> None:
        """Expire objects under ``prefix`` after ``days``."""
