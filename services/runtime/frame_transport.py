"""Camera frames over ZeroMQ, from capture processes to the aggregator.

Wire format: a two-part ZeroMQ message ``[header JSON, JPEG bytes]``. The header is a
:class:`FrameHeader`; the JPEG travels as a separate frame so it is never copied into JSON.

Topology: the aggregator binds one PULL socket; each capture connects a PUSH socket to it.
Cameras therefore come and go without the aggregator knowing them in advance, and a restarted
aggregator is reconnected to automatically. The sender never blocks: with ``ZMQ_IMMEDIATE``
a message is refused (not queued) while no aggregator is connected, and a small send
high-water mark refuses it while the aggregator is slow; the caller keeps its own bounded
newest-wins queue and counts what it drops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import zmq
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


class FrameSender:
    """A PUSH socket connected to the aggregator; :meth:`try_send` never blocks."""

    def __init__(
        self,
        endpoint: str,
        send_hwm: int = 4,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket[bytes] = self._ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.SNDHWM, send_hwm)
        # Refuse rather than queue while no aggregator is connected: frames queued for a
        # peer that may never come would be stale when it does.
        self._sock.setsockopt(zmq.IMMEDIATE, 1)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RECONNECT_IVL, 100)
        self._sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        try:
            self._sock.connect(endpoint)
        except zmq.ZMQError as exc:
            self._sock.close(0)
            raise ValueError(
                f"cannot connect to aggregator endpoint {endpoint!r} ({exc}); "
                "write it as tcp://HOST:PORT (DEPOTWATCH_CAPTURE__AGGREGATOR_ENDPOINT)"
            ) from None

    def try_send(self, frame: EncodedFrame) -> bool:
        """Send now if the aggregator can take it; False when it cannot (nothing is queued)."""
        try:
            self._sock.send_multipart(encode_frame(frame), flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        return True

    def close(self) -> None:
        """Close the socket (unsent frames are discarded)."""
        self._sock.close(0)


class FrameReceiver:
    """A PULL socket bound where every capture connects."""

    def __init__(
        self,
        endpoint: str,
        receive_hwm: int = 16,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket[bytes] = self._ctx.socket(zmq.PULL)
        self._sock.setsockopt(zmq.RCVHWM, receive_hwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self._sock.close(0)
            raise OSError(
                f"cannot listen for cameras on {endpoint!r} ({exc}); set "
                "DEPOTWATCH_AGGREGATOR__BIND to a free tcp://HOST:PORT (port * picks one)"
            ) from None
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)

    @property
    def endpoint(self) -> str:
        """The bound endpoint, with the real port when ``*`` was asked for."""
        last = self._sock.getsockopt(zmq.LAST_ENDPOINT)
        return last.decode() if isinstance(last, bytes) else str(last)

    def receive(self, timeout_s: float) -> list[bytes] | None:
        """The parts of the next message, or None if none arrived within ``timeout_s``."""
        if not self._poller.poll(int(timeout_s * 1000)):
            return None
        return self._sock.recv_multipart()

    def close(self) -> None:
        """Close the socket."""
        self._sock.close(0)
