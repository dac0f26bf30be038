"""Property-based tests of every message decoder: whatever bytes arrive, ``decode`` returns a
valid message or raises one :class:`MessageDecodeError` with a one-line reason, never anything
else (a bad message must never stop a service)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from message_samples import every_message

from schemas.base import Message, MessageDecodeError, decode, encode
from schemas.topics import MESSAGE_MODELS

SAMPLES = {type(m): m for m in every_message()}
# Derandomized: the same 150 inputs every run, so a CI run never depends on luck (a new input
# class is found by widening the strategies, not by chance).
PROPERTY = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


def _outcome(model: type[Message], payload: bytes, **kw: Any) -> Message | str:
    """The decoded message, or the reason it was refused."""
    try:
        return decode(model, payload, **kw)
    except MessageDecodeError as exc:
        return exc.reason


def _decodes_or_explains(model: type[Message], payload: bytes) -> None:
    out = _outcome(model, payload)
    if isinstance(out, str):
        assert out
        assert "\n" not in out
    else:
        assert isinstance(out, model)


@pytest.mark.parametrize("model", MESSAGE_MODELS, ids=lambda m: m.__name__)
@PROPERTY
@given(payload=st.binary(max_size=512))
def test_any_bytes_decode_or_give_one_reason(model: type[Message], payload: bytes) -> None:
    _decodes_or_explains(model, payload)


@pytest.mark.parametrize("model", MESSAGE_MODELS, ids=lambda m: m.__name__)
@PROPERTY
@given(data=st.data())
def test_a_valid_message_with_one_field_mangled(model: type[Message], data: st.DataObject) -> None:
    doc = json.loads(encode(SAMPLES[model]))
    field = data.draw(st.sampled_from(sorted(doc)))
    doc[field] = data.draw(json_values)
    _decodes_or_explains(model, json.dumps(doc).encode())


@pytest.mark.parametrize("model", MESSAGE_MODELS, ids=lambda m: m.__name__)
@PROPERTY
@given(skew_s=st.floats(min_value=-1e9, max_value=1e9, allow_nan=False))
@example(skew_s=299.0)
@example(skew_s=301.0)
@example(skew_s=3600.0)
@example(skew_s=-86400.0 * 365)
def test_round_trip_with_any_message_timestamp(model: type[Message], skew_s: float) -> None:
    message = SAMPLES[model]
    at = message.event_time()
    produced = (at or datetime(2026, 11, 21, tzinfo=UTC)) - timedelta(seconds=skew_s)
    out = _outcome(model, encode(message), produced_at=produced)
    if at is not None and skew_s > 300.001:  # its event lies after it was produced
        assert isinstance(out, str)
        assert "clock-skew bound" in out
    elif skew_s <= 300:
        assert out == message
