"""Counting and logging fields a newer producer sent (names bounded: they come from outside)."""

from __future__ import annotations

import logging

import pytest
from message_samples import frame_ref

from schemas import FrameRef, decode, encode
from services.runtime import kafka


def test_unknown_field_names_are_bounded_before_they_are_kept_or_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import json

    data = json.loads(encode(frame_ref(seq=1)))
    data |= {f"f{i:03d}" + "x" * 500: i for i in range(50)}
    message = decode(FrameRef, json.dumps(data).encode())
    kafka._UNKNOWN_LOGGED.clear()
    with caplog.at_level(logging.INFO, logger="services.runtime.kafka"):
        kafka.note_unknown_fields("test", "frames.v1", message)
        kafka.note_unknown_fields("test", "frames.v1", message)  # the same set: logged once
    ((_, _, names),) = kafka._UNKNOWN_LOGGED
    assert len(names) == 10
    assert all(len(name) <= 64 for name in names)
    assert len([r for r in caplog.records if "does not know" in r.getMessage()]) == 1
