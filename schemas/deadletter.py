"""``deadletter.v1``: messages a service could not process, with the reason. Nothing is lost."""

from __future__ import annotations

import base64
from typing import ClassVar

from pydantic import Field

from schemas.base import Message, UtcDatetime


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

    @property
    def payload(self) -> bytes:
        """The original message value."""
        return base64.b64decode(self.payload_b64)

    @staticmethod
    def b64(data: bytes | None) -> str | None:
        """Base64 text of ``data`` (None stays None)."""
        return None if data is None else base64.b64encode(data).decode()
