"""The frame wire format, capture -> aggregator (pure: no sockets, see ``frame_transport``).

A two-part ZeroMQ message ``[header JSON, JPEG bytes]``. The header is a :class:`FrameHeader`;
the JPEG travels as a separate part so it is never copied into JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pydantic import Field, ValidationError

from schemas.base import Identifier, StrictModel, UtcDatetime, describe_validation_error


class FrameHeader(StrictModel):
    """Metadata sent with every JPEG from capture to the aggregator."""

    WIRE_VERSION: ClassVar[int] = 1

    v: int = Field(default=1, description="Wire format version.")
    camera_id: Identifier = Field(description="Camera that captured the frame.")
    seq: int = Field(ge=0, description="Per-camera sequence number (see capture).")
    captured_at: UtcDatetime = Field(description="When capture read the frame (UTC).")
    width: int = Field(gt=0, le=16384, description="Image width in pixels.")
    height: int = Field(gt=0, le=16384, description="Image height in pixels.")
    reconnects: int = Field(
        default=0, ge=0, description="Times capture reopened the stream since it started."
    )


@dataclass(frozen=True)
class EncodedFrame:
    """One JPEG-encoded frame and its header."""

    header: FrameHeader
    jpeg: bytes

    def __len__(self) -> int:
        # Queues budget frames by their payload size.
        return len(self.jpeg)


class FrameDecodeError(ValueError):
    """A ZeroMQ message is not a valid frame; the message says why in one line."""


def encode_frame(frame: EncodedFrame) -> list[bytes]:
    """The two ZeroMQ message parts of a frame."""
    return [frame.header.model_dump_json().encode(), frame.jpeg]


def decode_frame(parts: list[bytes]) -> EncodedFrame:
    """Parse the parts of a ZeroMQ message; raises :class:`FrameDecodeError`."""
    if len(parts) != 2:
        raise FrameDecodeError(
            f"expected 2 message parts (header, JPEG), got {len(parts)}; "
            "is the sender a depotwatch capture of the same version?"
        )
    header_raw, jpeg = parts
    try:
        header = FrameHeader.model_validate_json(header_raw)
    except ValidationError as exc:
        raise FrameDecodeError(f"bad frame header: {describe_validation_error(exc)}") from None
    if header.v != FrameHeader.WIRE_VERSION:
        raise FrameDecodeError(
            f"frame wire version {header.v} is not supported (this build reads "
            f"{FrameHeader.WIRE_VERSION}); run capture and aggregator from the same release"
        )
    if not jpeg.startswith(b"\xff\xd8"):
        raise FrameDecodeError(f"frame {header.camera_id}/{header.seq} payload is not a JPEG")
    return EncodedFrame(header=header, jpeg=jpeg)
