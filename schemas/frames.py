"""``frames.v1``: the claim-check reference to one stored camera frame."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from pydantic import Field

from schemas.base import Identifier, Message, UtcDatetime

MAX_SEQ = 10**13
"""Larger sequence numbers are corrupt. Captures number frames from the start time in ms
since the epoch (about 1.8e12 in 2026; 1e13 is the year 2286)."""


class FrameRef(Message):
    """One camera frame stored in the object store. Images never travel through Kafka."""

    TOPIC: ClassVar[str] = "frames.v1"
    KEY_FIELD: ClassVar[str] = "camera_id"
    SCHEMA_VERSION: ClassVar[int] = 3
    """2: ``stored_at`` added. 3: ``reconnects`` added."""

    camera_id: Identifier = Field(description="Camera that captured the frame (the Kafka key).")
    seq: int = Field(
        ge=0,
        le=MAX_SEQ,
        description="Per-camera sequence number, increasing from capture start.",
    )
    captured_at: UtcDatetime = Field(description="When the capture service read the frame (UTC).")
    bucket: str = Field(min_length=3, max_length=63, description="Object store bucket.")
    key: str = Field(min_length=1, max_length=1024, description="Object key of the JPEG.")
    width: int = Field(gt=0, le=16384, description="Image width in pixels.")
    height: int = Field(gt=0, le=16384, description="Image height in pixels.")
    size: int = Field(gt=0, description="Object size in bytes.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 of the object bytes.")
    content_type: str = Field(default="image/jpeg", description="MIME type of the object.")
    stored_at: UtcDatetime | None = Field(
        default=None,
        description="When the aggregator had the image stored (UTC): captured_at -> stored_at is "
        "the ingest latency. Null from producers that do not say.",
    )
    reconnects: int | None = Field(
        default=None,
        ge=0,
        description="Times the camera's capture reopened its stream (dropped, silent, or "
        "failed to open) since the capture started. Null from producers that do not say.",
    )

    def event_time(self) -> datetime:
        """The capture time."""
        return self.captured_at
