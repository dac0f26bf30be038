"""Shared base for every Kafka message: wire models, UTC timestamps, one (de)serialiser.

Every message model declares the topic it travels on (``TOPIC``, possibly a template with
``{flow}``) and the field whose value is its Kafka key (``KEY_FIELD``). Producers and
consumers never pick topics or keys by hand; they ask the model.

**Wire compatibility.** The major version is part of the topic name (``frames.v1``): a change
that removes, renames or retypes a field, or makes one required, is a new topic (``.v2``),
read side by side with the old one until every producer has moved. ``schema_version`` in
each message is the minor version within that major: a minor version only adds optional
fields (with defaults). So during a rolling upgrade a consumer accepts every minor version of
its major: fields it does not know (from a newer producer) are kept, ignored by its logic and
counted (:func:`unknown_fields`; the Kafka consumer counts them in
``depotwatch_messages_unknown_fields_total`` and logs each new set once), and fields a
message lacks (from an older producer) take their defaults. The facility config stays
strict (:class:`StrictModel`): a typo there is an error, not an unknown field.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

FLOW_NAME_PATTERN = r"^[a-z][a-z0-9-]{0,30}$"
"""Flow names become part of topic and consumer-group names, so they are kept to a safe alphabet."""

IDENTIFIER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
"""Camera, track and facility ids: they appear in Kafka keys, S3 keys, metrics labels and URLs."""


def _require_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            "timestamp has no time zone; send ISO-8601 with an offset, e.g. 2026-11-21T12:00:00Z"
        )
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_require_utc)]
"""A timezone-aware timestamp, normalised to UTC. Naive timestamps are rejected."""

Identifier = Annotated[str, Field(pattern=IDENTIFIER_PATTERN)]
FlowName = Annotated[str, Field(pattern=FLOW_NAME_PATTERN)]


MAX_CLOCK_SKEW_S = 300.0
"""Default bound on how far an event time may lie after its message's Kafka timestamp."""
EARLIEST_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)
"""Event times before this come from an unset clock."""


def utc_now() -> datetime:
    """Current time as an aware UTC datetime."""
    return datetime.now(UTC)


class StrictModel(BaseModel):
    """Base for config models: unknown fields are an error, models are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class WireModel(BaseModel):
    """Base for what travels in Kafka messages: immutable; fields this build does not know
    (a newer producer's minor version) are kept and reported by :func:`unknown_fields`."""

    model_config = ConfigDict(extra="allow", frozen=True, validate_default=True)


def unknown_fields(model: BaseModel, prefix: str = "") -> list[str]:
    """Dotted names of the fields in ``model`` (and the models inside it) that this build's
    schema does not declare: sent by a producer of a newer minor version."""
    found = [f"{prefix}{name}" for name in (model.model_extra or {})]
    for name in type(model).model_fields:
        value = getattr(model, name)
        items = value if isinstance(value, list | tuple) else [value]
        for i, item in enumerate(items):
            if isinstance(item, BaseModel):
                where = f"{prefix}{name}[{i}]." if value is not item else f"{prefix}{name}."
                found += unknown_fields(item, where)
    return found


class Message(WireModel):
    """A message on a Kafka topic.

    Subclasses set ``TOPIC`` (``"frames.v1"`` or a template such as ``"positions.{flow}.v1"``)
    and ``KEY_FIELD`` (the attribute whose string value is the Kafka key). ``SCHEMA_VERSION``
    is the minor version this build writes (see the module's compatibility rule).
    """

    TOPIC: ClassVar[str]
    KEY_FIELD: ClassVar[str]
    SCHEMA_VERSION: ClassVar[int] = 1

    schema_version: int = Field(
        default=1,
        description="Minor version of this message's schema within the topic's major version "
        "(the topic's .vN): newer minor versions only add optional fields, so every consumer "
        "of the topic reads every minor version.",
    )

    @model_validator(mode="before")
    @classmethod
    def _written_version(cls, data: Any) -> Any:
        # A message built without a version is of this build's version (not a fixed 1).
        if isinstance(data, dict) and "schema_version" not in data:
            return {**data, "schema_version": cls.SCHEMA_VERSION}
        return data

    @model_validator(mode="after")
    def _known_schema_version(self) -> Message:
        if self.schema_version < 1:
            raise ValueError(
                f"schema_version {self.schema_version} is not a version (versions start at 1); "
                "fix the producer"
            )
        return self

    @classmethod
    def topic_name(cls, flow: str | None = None) -> str:
        """The topic this message type travels on; flow-scoped topics need ``flow``."""
        if "{flow}" in cls.TOPIC:
            if flow is None:
                raise ValueError(f"{cls.__name__} lives on a per-flow topic; pass flow=")
            if not re.match(FLOW_NAME_PATTERN, flow):
                raise ValueError(f"flow name {flow!r} must match {FLOW_NAME_PATTERN}")
            return cls.TOPIC.format(flow=flow)
        return cls.TOPIC

    def kafka_key(self) -> bytes:
        """The Kafka key for this message (UTF-8 of the ``KEY_FIELD`` value)."""
        return str(getattr(self, self.KEY_FIELD)).encode()

    def event_time(self) -> datetime | None:
        """When what this message describes happened (frame capture); None: not an event."""
        return None


M = TypeVar("M", bound=Message)


class MessageDecodeError(ValueError):
    """A payload could not be decoded as the expected message type; ``reason`` says why."""

    def __init__(self, model: type[Message], reason: str) -> None:
        super().__init__(f"not a valid {model.__name__}: {reason}")
        self.model = model
        self.reason = reason


def encode(message: Message) -> bytes:
    """Serialise a message to its wire form (compact UTF-8 JSON)."""
    return message.model_dump_json().encode()


def decode(
    model: type[M],
    payload: bytes | None,
    produced_at: datetime | None = None,
    max_clock_skew_s: float = MAX_CLOCK_SKEW_S,
) -> M:
    """Parse and validate a wire payload as ``model``.

    With ``produced_at`` (the Kafka message timestamp), a message whose event time lies more
    than ``max_clock_skew_s`` after it is refused too (see :func:`event_time_problem`).
    Raises :class:`MessageDecodeError` with a one-line reason that names the bad field.
    """
    if payload is None:
        raise MessageDecodeError(model, "empty payload (tombstone)")
    try:
        message = model.model_validate_json(payload)
    except ValidationError as exc:
        raise MessageDecodeError(model, describe_validation_error(exc)) from None
    problem = event_time_problem(message, produced_at, max_clock_skew_s)
    if problem is not None:
        raise MessageDecodeError(model, problem)
    return message


def event_time_problem(
    message: Message, produced_at: datetime | None, max_clock_skew_s: float = MAX_CLOCK_SKEW_S
) -> str | None:
    """Why a message's event time cannot be true, or None.

    The accepted window: not before :data:`EARLIEST_EVENT_TIME`, and not more than
    ``max_clock_skew_s`` after the message was produced (a frame cannot be captured after its
    reference was sent). Old events are accepted: replays and backlogs are legitimate. A frame
    stamped in 2099 would otherwise stay a camera's "latest" frame forever.
    """
    at = message.event_time()
    if at is None:
        return None
    if at < EARLIEST_EVENT_TIME:
        return (
            f"event time {at.isoformat()} is before {EARLIEST_EVENT_TIME.year}: "
            "the sender's clock is not set (sync it with NTP)"
        )
    if produced_at is not None:
        ahead = (at - produced_at).total_seconds()
        if ahead > max_clock_skew_s:
            return (
                f"event time {at.isoformat()} is {ahead:,.0f} s after the message was produced "
                f"(more than the {max_clock_skew_s:.0f} s clock-skew bound, "
                "DEPOTWATCH_KAFKA__MAX_CLOCK_SKEW_S): fix the sender's clock"
            )
    return None


def kafka_time(timestamp_ms: int | None) -> datetime | None:
    """A Kafka record timestamp (ms since the epoch; <= 0: none) as an aware datetime."""
    if timestamp_ms is None or timestamp_ms <= 0:
        return None
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC)


def describe_validation_error(
    exc: ValidationError,
    limit: int = 5,
    name: Callable[[tuple[int | str, ...]], str] | None = None,
) -> str:
    """One line naming each bad field (up to ``limit``), e.g. ``seq: Input should be >= 0``.

    ``name`` turns a field's location into what the reader knows it by (default ``a.b.c``).
    Never the input value: it may be a secret.
    """
    parts = []
    for err in exc.errors()[:limit]:
        if not err["loc"]:
            loc = "<message>"
        else:
            loc = name(err["loc"]) if name else ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']}")
    more = len(exc.errors()) - limit
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)


def with_schema_version(model: type[Message]) -> dict[str, Any]:
    """JSON Schema of ``model`` with topic and key metadata for non-Python consumers."""
    schema = model.model_json_schema(mode="serialization")
    schema["x-kafka-topic"] = model.TOPIC
    schema["x-kafka-key"] = model.KEY_FIELD
    schema["x-schema-version"] = model.SCHEMA_VERSION
    return schema


def model_copy_validated(model: M, **changes: Any) -> M:
    """``model_copy(update=...)`` that re-validates, since frozen copies skip validation."""
    data = model.model_dump()
    data.update(changes)
    return type(model).model_validate(data)


__all__ = [
    "FLOW_NAME_PATTERN",
    "IDENTIFIER_PATTERN",
    "FlowName",
    "Identifier",
    "Message",
    "MessageDecodeError",
    "StrictModel",
    "UtcDatetime",
    "WireModel",
    "decode",
    "describe_validation_error",
    "encode",
    "event_time_problem",
    "kafka_time",
    "model_copy_validated",
    "unknown_fields",
    "utc_now",
    "with_schema_version",
]
