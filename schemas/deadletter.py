"""``deadletter.v1``: messages a service could not process, with the reason. Nothing is lost.

An original larger than :data:`MAX_PAYLOAD_BYTES` is kept truncated (its first bytes, its size
and its SHA-256), so the dead letter itself always fits the broker's message limit (1 MB by
default): a 5 MB poison message once crash-looped the estimators because forwarding it failed
with MSG_SIZE_TOO_LARGE and its offset was never committed.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime
from typing import ClassVar

from pydantic import Field

from schemas.base import Message, UtcDatetime, utc_now

MAX_PAYLOAD_BYTES = 256 * 1024
"""Largest original kept whole (base64 makes it ~350 KB, under the usual 1 MB limit)."""


class DeadLetter(Message):
    """The original bytes of a message that could not be processed, and why."""

    TOPIC: ClassVar[str] = "deadletter.v1"
    KEY_FIELD: ClassVar[str] = "source_topic"

    source_topic: str = Field(description="Topic the message came from (the Kafka key).")
    source_partition: int = Field(ge=0, description="Partition it came from.")
    source_offset: int = Field(ge=0, description="Offset it had there.")
    source_key_b64: str | None = Field(default=None, description="Original key, base64.")
    payload_b64: str = Field(description="Original value bytes, base64.")
    reason: str = Field(min_length=1, description="Why it could not be processed.")
    service: str = Field(description="Service (and flow) that gave up on it.")
    dead_lettered_at: UtcDatetime = Field(description="When it was dead-lettered (UTC).")
    payload_size: int | None = Field(
        default=None, ge=0, description="Size of the original value in bytes."
    )
    payload_truncated: bool = Field(
        default=False, description="True when payload_b64 holds only the first bytes."
    )
    payload_sha256: str | None = Field(
        default=None, description="Hex SHA-256 of the whole original value."
    )

    @classmethod
    def of(
        cls,
        *,
        topic: str,
        partition: int | None,
        offset: int | None,
        key: bytes | None,
        value: bytes | None,
        reason: str,
        service: str,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
        at: datetime | None = None,
    ) -> DeadLetter:
        """The dead letter of one consumed message; a large original is truncated."""
        data = value or b""
        truncated = len(data) > max_payload_bytes
        if truncated:
            reason = f"{reason} (original {len(data):,} bytes; first {max_payload_bytes:,} kept)"
        return cls(
            source_topic=topic,
            source_partition=max(0, partition or 0),
            source_offset=max(0, offset or 0),
            source_key_b64=cls.b64(key[:max_payload_bytes] if key is not None else None),
            payload_b64=cls.b64(data[:max_payload_bytes]) or "",
            reason=reason,
            service=service,
            dead_lettered_at=at or utc_now(),
            payload_size=len(data),
            payload_truncated=truncated,
            payload_sha256=hashlib.sha256(data).hexdigest(),
        )

    @property
    def payload(self) -> bytes:
        """The original message value."""
        return base64.b64decode(self.payload_b64)

    @staticmethod
    def b64(data: bytes | None) -> str | None:
        """Base64 text of ``data`` (None stays None)."""
        return None if data is None else base64.b64encode(data).decode()
