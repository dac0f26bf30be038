"""Frames over ZeroMQ: the wire format, and a real PUSH/PULL pair on loopback."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from services.runtime.frame_transport import FrameReceiver, FrameSender
from services.runtime.frame_wire import (
    EncodedFrame,
    FrameDecodeError,
    FrameHeader,
    decode_frame,
    encode_frame,
)

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9"


def header(seq: int = 7, camera_id: str = "cam-1") -> FrameHeader:
    return FrameHeader(
        camera_id=camera_id,
        seq=seq,
        captured_at=datetime(2026, 11, 21, 12, 0, 1, 234000, tzinfo=UTC),
        width=1280,
        height=720,
    )


def test_a_frame_survives_encode_and_decode() -> None:
    frame = EncodedFrame(header(), JPEG)
    assert decode_frame(encode_frame(frame)) == frame


def test_timestamps_arrive_in_utc() -> None:
    local = datetime(2026, 11, 21, 15, 0, tzinfo=UTC).astimezone(timezone(timedelta(hours=3)))
    h = FrameHeader(camera_id="c", seq=0, captured_at=local, width=1, height=1)
    decoded = decode_frame(encode_frame(EncodedFrame(h, JPEG))).header
    assert decoded.captured_at.utcoffset() == timedelta(0)
    assert decoded.captured_at == local


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([b"{}"], "expected 2 message parts"),
        ([b"not json", JPEG], "bad frame header"),
        ([header().model_dump_json().encode(), b"PNG..."], "is not a JPEG"),
        (
            [header().model_dump_json().encode().replace(b'"seq":7', b'"seq":-1'), JPEG],
            "seq",
        ),
        (
            [header().model_dump_json().encode().replace(b'"v":1', b'"v":9'), JPEG],
            "wire version 9",
        ),
    ],
)
def test_bad_messages_are_refused_with_a_reason(parts: list[bytes], message: str) -> None:
    with pytest.raises(FrameDecodeError, match=message):
        decode_frame(parts)


def bind_when_free(endpoint: str, timeout_s: float = 5.0) -> FrameReceiver:
    # ZeroMQ closes a listener asynchronously: the port frees up a moment after close().
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return FrameReceiver(endpoint)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def test_sender_refuses_without_an_aggregator_then_delivers_once_it_listens() -> None:
    probe = FrameReceiver("tcp://127.0.0.1:*")
    endpoint = probe.endpoint
    probe.close()
    sender = FrameSender(endpoint, send_hwm=2)
    try:
        frame = EncodedFrame(header(), JPEG)
        # Nobody listens: refused at once instead of queued.
        assert not sender.try_send(frame)
        receiver = bind_when_free(endpoint)
        try:
            parts = None
            for _ in range(200):  # reconnect interval is 100 ms; allow 4 s
                if sender.try_send(frame):
                    parts = receiver.receive(timeout_s=2.0)
                    break
                receiver.receive(timeout_s=0.02)
            assert parts is not None
            assert decode_frame(parts) == frame
        finally:
            receiver.close()
    finally:
        sender.close()


def test_bind_to_a_busy_port_says_what_to_do() -> None:
    first = FrameReceiver("tcp://127.0.0.1:*")
    try:
        with pytest.raises(OSError, match="DEPOTWATCH_AGGREGATOR__BIND"):
            FrameReceiver(first.endpoint)
    finally:
        first.close()
