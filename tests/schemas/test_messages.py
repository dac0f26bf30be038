"""Message models: wire round trips, strictness, UTC timestamps, topics and keys."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from schemas import (
    BoundingBox,
    DeadLetter,
    Detection,
    FacilityState,
    FrameRef,
    GroundTruth,
    IdentityEstimate,
    Message,
    MessageDecodeError,
    PositionEstimate,
    TrackObservation,
    decode,
    encode,
)
from schemas.base import unknown_fields, with_schema_version
from schemas.facility import CameraPose
from schemas.jobs import JobStatus
from schemas.topics import MESSAGE_MODELS, topics_for

AT = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)
SHA = "ab" * 32


def _frame(**changes: Any) -> dict[str, Any]:
    data = {
        "camera_id": "cam-s1",
        "seq": 42,
        "captured_at": AT.isoformat(),
        "bucket": "depotwatch-frames",
        "key": "cam-s1/2026/11/21/000042.jpg",
        "width": 1280,
        "height": 720,
        "size": 123456,
        "sha256": SHA,
    }
    return data | changes


def _observation(**changes: Any) -> dict[str, Any]:
    data = {
        "kind": "head",
        "floor_x_m": 12.5,
        "floor_y_m": 4.1,
        "track_id": "T1",
        "position_m": 12.5,
        "distance_to_track_m": 0.1,
        "confidence": 0.9,
    }
    return data | changes


def _detection(cls: str = "head") -> dict[str, Any]:
    return {"cls": cls, "bbox": {"x1": 10, "y1": 20, "x2": 110, "y2": 220}, "confidence": 0.8}


# One valid example of every message model, as the plain data a producer would send. The
# timestamp fields of each are listed so that every one of them is checked for UTC handling.
EXAMPLES: dict[type[Message], tuple[dict[str, Any], list[str]]] = {
    FrameRef: (_frame(), ["captured_at"]),
    PositionEstimate: (
        {
            "flow": "prod",
            "camera_id": "cam-s1",
            "frame": _frame(),
            "estimator": "position-estimator/0.1",
            "model_version": "depot-yolo-1",
            "estimated_at": AT.isoformat(),
            "detections": [_detection("head"), _detection("tail")],
            "observations": [
                _observation(),
                _observation(kind="tail", track_id=None, position_m=None),
            ],
        },
        ["estimated_at"],
    ),
    IdentityEstimate: (
        {
            "flow": "dev",
            "camera_id": "cam-n2",
            "frame": _frame(camera_id="cam-n2"),
            "estimator": "plate-ocr/0.1",
            "estimated_at": AT.isoformat(),
            "plate_text": "2TE116-1234",
            "plate_confidence": 0.97,
            "locomotive_model": "2TE116",
            "model_confidence": 0.9,
            "plate_box": _detection("plate"),
            "observation": _observation(kind="plate"),
        },
        ["estimated_at"],
    ),
    FacilityState: (
        {
            "facility_id": "depot-north",
            "flow": "prod",
            "as_of": AT.isoformat(),
            "tracks": [
                {
                    "track_id": "T1",
                    "locomotives": [
                        {
                            "locomotive_id": "loco-1",
                            "head_m": 3.0,
                            "tail_m": 20.15,
                            "model": "TEM2",
                            "plate": "TEM2-0001",
                            "confidence": 0.8,
                            "cameras": ["cam-s1", "cam-s2"],
                            "last_seen": AT.isoformat(),
                        }
                    ],
                },
                {"track_id": "T2", "locomotives": []},
            ],
            "cameras": [
                {"camera_id": "cam-s1", "status": "ok", "last_frame_at": AT.isoformat()},
                {"camera_id": "cam-s2", "status": "stale"},
            ],
        },
        ["as_of"],
    ),
    GroundTruth: (
        {
            "facility_id": "depot-north",
            "scenario": "shunting",
            "seed": 7,
            "tick": 3,
            "at": AT.isoformat(),
            "locomotives": [
                {
                    "locomotive_id": "sim-1",
                    "track_id": "T2",
                    "head_m": 5.0,
                    "tail_m": 23.15,
                    "model": "2TE116",
                    "plate": "2TE116-1234",
                }
            ],
            "cameras_down": ["cam-n3"],
        },
        ["at"],
    ),
    DeadLetter: (
        {
            "source_topic": "frames.v1",
            "source_partition": 2,
            "source_offset": 17,
            "source_key_b64": DeadLetter.b64(b"cam-s1"),
            "payload_b64": DeadLetter.b64(b"{not json"),
            "reason": "not a valid FrameRef: Invalid JSON",
            "service": "position-estimator[prod]",
            "dead_lettered_at": AT.isoformat(),
        },
        ["dead_lettered_at"],
    ),
    JobStatus: (
        {
            "id": "0123456789abcdef0123456789abcdef",
            "kind": "replay",
            "request": {"kind": "replay", "flow": "dev", "start": AT.isoformat()},
            "queue": "replay",
            "state": "running",
            "progress_pct": 42.0,
            "created_at": AT.isoformat(),
            "started_at": AT.isoformat(),
            "finished_at": AT.isoformat(),
            "updated_at": AT.isoformat(),
            "attempts": 1,
            "worker": "worker@host",
        },
        ["created_at", "started_at", "finished_at", "updated_at"],
    ),
}

MODELS = list(EXAMPLES)
TIMESTAMP_FIELDS = [(model, name) for model, (_, names) in EXAMPLES.items() for name in names]


def _payload(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode()


def _all_message_subclasses(cls: type[Message]) -> set[type[Message]]:
    found = set()
    for sub in cls.__subclasses__():
        found.add(sub)
        found |= _all_message_subclasses(sub)
    return found


def test_examples_and_catalogue_cover_every_message_model() -> None:
    assert set(MESSAGE_MODELS) == _all_message_subclasses(Message)
    assert set(EXAMPLES) == set(MESSAGE_MODELS)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_round_trip_through_the_wire(model: type[Message]) -> None:
    message = model.model_validate(EXAMPLES[model][0])

    wire = encode(message)
    back = decode(model, wire)

    assert back == message
    assert encode(back) == wire
    assert json.loads(wire)["schema_version"] == model.SCHEMA_VERSION


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_a_newer_minor_version_is_read_and_its_new_fields_reported(model: type[Message]) -> None:
    # Rolling upgrade: a producer one minor version ahead adds an optional field. Older
    # consumers must read the message (not dead-letter it) and report the field they ignore.
    data = EXAMPLES[model][0] | {"schema_version": 2, "colour": "red"}
    message = decode(model, _payload(data))
    assert unknown_fields(message) == ["colour"]
    assert unknown_fields(decode(model, _payload(EXAMPLES[model][0]))) == []


def test_unknown_fields_inside_nested_models_are_found_by_path() -> None:
    data = json.loads(_payload(EXAMPLES[PositionEstimate][0]))
    assert data["observations"], "the example needs an observation"
    data["observations"][0]["height_m"] = 4.5
    message = decode(PositionEstimate, json.dumps(data).encode())
    assert unknown_fields(message) == ["observations[0].height_m"]


def test_a_typo_in_the_facility_config_is_still_an_error() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        CameraPose.model_validate(
            {"position": [0, 0, 8], "look_at": [5, 5, 0], "hfov_deg": 60, "hfov": 60}
        )


@pytest.mark.parametrize(("model", "field"), TIMESTAMP_FIELDS, ids=str)
def test_naive_timestamp_is_rejected(model: type[Message], field: str) -> None:
    data = EXAMPLES[model][0] | {field: "2026-11-21T12:00:00"}
    with pytest.raises(MessageDecodeError, match=f"{field}: Value error, timestamp has no time"):
        decode(model, _payload(data))


@pytest.mark.parametrize(("model", "field"), TIMESTAMP_FIELDS, ids=str)
@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ("2026-11-21T15:00:00+03:00", AT),
        ("2026-11-21T07:30:00-04:30", AT),
        ("2026-11-21T12:00:00Z", AT),
        ("2026-11-22T00:00:00+12:00", AT),
    ],
)
def test_offset_timestamp_is_normalised_to_utc(
    model: type[Message], field: str, sent: str, expected: datetime
) -> None:
    message = decode(model, _payload(EXAMPLES[model][0] | {field: sent}))
    value = getattr(message, field)
    assert value == expected
    assert value.utcoffset() == timedelta(0)
    assert value.tzinfo == UTC
    assert json.loads(encode(message))[field] == "2026-11-21T12:00:00Z"


def test_aware_python_datetime_is_normalised_too() -> None:
    plus_two = timezone(timedelta(hours=2))
    frame = FrameRef.model_validate(_frame(captured_at=datetime(2026, 11, 21, 14, tzinfo=plus_two)))
    assert frame.captured_at == AT
    assert frame.captured_at.tzinfo == UTC


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("version", [0, -1])
def test_a_schema_version_below_one_is_rejected(model: type[Message], version: int) -> None:
    data = EXAMPLES[model][0] | {"schema_version": version}
    with pytest.raises(MessageDecodeError) as caught:
        decode(model, _payload(data))
    assert f"schema_version {version} is not a version (versions start at 1)" in str(caught.value)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("version", [2, 99])
def test_every_minor_version_of_the_topic_is_read(model: type[Message], version: int) -> None:
    message = decode(model, _payload(EXAMPLES[model][0] | {"schema_version": version}))
    assert message.schema_version == version


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (None, "empty payload (tombstone)"),
        (b"{not json", "<message>: Invalid JSON: key must be a string at line 1 column 2"),
        (b"[]", "<message>: Input should be an object"),
        (_payload(_frame(seq=-1)), "seq: Input should be greater than or equal to 0"),
        (_payload(_frame(sha256="xyz")), "sha256: String should match pattern '^[0-9a-f]{64}$'"),
        (
            _payload({k: v for k, v in _frame().items() if k != "bucket"}),
            "bucket: Field required",
        ),
        (_payload(_frame(camera_id="cam 1")), "camera_id: String should match pattern"),
    ],
)
def test_decode_errors_name_the_problem(payload: bytes | None, reason: str) -> None:
    with pytest.raises(MessageDecodeError) as caught:
        decode(FrameRef, payload)
    assert caught.value.reason.startswith(reason)
    assert caught.value.model is FrameRef


def test_decode_error_lists_at_most_five_fields() -> None:
    bad = _frame(seq=-1, width=0, height=0, size=0, sha256="x", bucket="b", key="")
    with pytest.raises(MessageDecodeError) as caught:
        decode(FrameRef, _payload(bad))
    assert caught.value.reason.count(";") == 5
    assert caught.value.reason.endswith("... and 2 more")


def test_messages_are_immutable() -> None:
    frame = FrameRef.model_validate(_frame())
    with pytest.raises(ValidationError, match="frozen"):
        frame.seq = 43  # type: ignore[misc]


@pytest.mark.parametrize(
    ("model", "flow", "topic"),
    [
        (FrameRef, None, "frames.v1"),
        (FrameRef, "prod", "frames.v1"),  # shared by every flow: the flow is ignored
        (PositionEstimate, "prod", "positions.prod.v1"),
        (PositionEstimate, "dev", "positions.dev.v1"),
        (IdentityEstimate, "exp-2", "identities.exp-2.v1"),
        (FacilityState, "prod", "facility-state.prod.v1"),
        (GroundTruth, None, "ground-truth.v1"),
        (DeadLetter, None, "deadletter.v1"),
    ],
)
def test_topic_name(model: type[Message], flow: str | None, topic: str) -> None:
    assert model.topic_name(flow) == topic


@pytest.mark.parametrize(
    ("model", "flow", "message"),
    [
        (PositionEstimate, None, "PositionEstimate lives on a per-flow topic; pass flow="),
        (FacilityState, None, "FacilityState lives on a per-flow topic; pass flow="),
        (IdentityEstimate, "Prod", "flow name 'Prod' must match"),
        (PositionEstimate, "a.b", "flow name 'a.b' must match"),
        (PositionEstimate, "", "flow name '' must match"),
    ],
)
def test_topic_name_needs_a_valid_flow(
    model: type[Message], flow: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        model.topic_name(flow)


@pytest.mark.parametrize(
    ("model", "key_field", "key"),
    [
        (FrameRef, "camera_id", b"cam-s1"),
        (PositionEstimate, "camera_id", b"cam-s1"),
        (IdentityEstimate, "camera_id", b"cam-n2"),
        (FacilityState, "facility_id", b"depot-north"),
        (GroundTruth, "facility_id", b"depot-north"),
        (DeadLetter, "source_topic", b"frames.v1"),
        (JobStatus, "id", b"0123456789abcdef0123456789abcdef"),
    ],
)
def test_kafka_key(model: type[Message], key_field: str, key: bytes) -> None:
    assert key_field == model.KEY_FIELD
    assert key_field in model.model_fields
    assert model.model_validate(EXAMPLES[model][0]).kafka_key() == key


def test_topics_for_two_flows() -> None:
    specs = {s.name: s for s in topics_for(["prod", "dev", "prod"])}
    assert sorted(specs) == [
        "deadletter.v1",
        "facility-state.dev.v1",
        "facility-state.prod.v1",
        "frames.v1",
        "ground-truth.v1",
        "identities.dev.v1",
        "identities.prod.v1",
        "jobs.v1",
        "positions.dev.v1",
        "positions.prod.v1",
    ]
    assert specs["facility-state.prod.v1"].config["cleanup.policy"] == "compact"
    # A day of states is never compacted away: the REST API's state history reads it.
    assert specs["facility-state.prod.v1"].config["min.compaction.lag.ms"] == str(86_400_000)
    assert specs["facility-state.prod.v1"].partitions == 1
    assert specs["jobs.v1"].config["cleanup.policy"] == "compact"
    assert specs["frames.v1"].key_field == "camera_id"
    assert specs["positions.dev.v1"].model is PositionEstimate


@pytest.mark.parametrize(
    ("box", "valid"),
    [
        ((0, 0, 10, 10), True),
        ((5, 5, 5, 5), True),  # a degenerate box is still ordered
        ((10.5, 0, 10.5, 3), True),
        ((10, 0, 0, 10), False),
        ((0, 10, 10, 0), False),
        ((10, 10, 0, 0), False),
    ],
)
def test_box_corner_order(box: tuple[float, float, float, float], valid: bool) -> None:
    corners = dict(zip(("x1", "y1", "x2", "y2"), box, strict=True))
    if valid:
        assert BoundingBox.model_validate(corners).x2 == box[2]
    else:
        with pytest.raises(ValidationError, match="box corners are swapped: need x1 <= x2"):
            BoundingBox.model_validate(corners)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"plate_text": "TEM2-0001", "unreadable_reason": None}, None),
        ({"plate_text": None, "unreadable_reason": "blurred"}, None),
        ({"plate_text": "TEM2-0001", "unreadable_reason": "low confidence"}, None),
        ({"plate_text": None, "unreadable_reason": None}, "must give unreadable_reason"),
        ({"plate_text": None, "unreadable_reason": ""}, "must give unreadable_reason"),
    ],
)
def test_identity_gives_text_or_a_reason(changes: dict[str, Any], problem: str | None) -> None:
    data = EXAMPLES[IdentityEstimate][0] | changes
    if problem is None:
        assert decode(IdentityEstimate, _payload(data)).plate_text == changes["plate_text"]
    else:
        with pytest.raises(MessageDecodeError, match=problem):
            decode(IdentityEstimate, _payload(data))


@pytest.mark.parametrize(
    ("track_id", "position_m", "valid"),
    [("T1", 3.0, True), (None, None, True), ("T1", None, False), (None, 3.0, False)],
)
def test_track_observation_places_on_a_track_fully_or_not_at_all(
    track_id: str | None, position_m: float | None, valid: bool
) -> None:
    data = _observation(track_id=track_id, position_m=position_m)
    if valid:
        assert TrackObservation.model_validate(data).track_id == track_id
    else:
        with pytest.raises(ValidationError, match="track_id and position_m must both be set"):
            TrackObservation.model_validate(data)


@pytest.mark.parametrize(
    ("cls", "confidence", "valid"),
    [("head", 0.5, True), ("plate", 1.0, True), ("wheel", 0.5, False), ("tail", 1.01, False)],
)
def test_detection_class_and_confidence(cls: str, confidence: float, valid: bool) -> None:
    data = _detection(cls) | {"confidence": confidence}
    if valid:
        assert Detection.model_validate(data).cls == cls
    else:
        with pytest.raises(ValidationError):
            Detection.model_validate(data)


def test_facility_state_rejects_a_track_listed_twice() -> None:
    data = EXAMPLES[FacilityState][0]
    data = data | {"tracks": [*data["tracks"], {"track_id": "T1"}]}
    with pytest.raises(MessageDecodeError, match="a track appears twice in tracks"):
        decode(FacilityState, _payload(data))


def test_facility_state_counts_locomotives() -> None:
    state = FacilityState.model_validate(EXAMPLES[FacilityState][0])
    assert state.locomotive_count == 1


def test_dead_letter_keeps_the_original_bytes() -> None:
    original = bytes(range(256))
    data = EXAMPLES[DeadLetter][0] | {"payload_b64": DeadLetter.b64(original)}
    letter = decode(DeadLetter, encode(DeadLetter.model_validate(data)))
    assert letter.payload == original
    assert DeadLetter.b64(None) is None


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_encoded_message_matches_its_published_json_schema(model: type[Message]) -> None:
    # The schema `depotwatch schemas export` writes for non-Python consumers.
    schema = with_schema_version(model)
    validator = jsonschema.Draft202012Validator(schema)
    wire = json.loads(encode(model.model_validate(EXAMPLES[model][0])))

    assert list(validator.iter_errors(wire)) == []
    # Non-Python consumers follow the same rule: a newer minor version's fields are allowed.
    assert validator.is_valid(wire | {"colour": "red"})
    required = schema["required"][0]
    assert not validator.is_valid({k: v for k, v in wire.items() if k != required})
    assert schema["x-kafka-topic"] == model.TOPIC


# ---- accepted event-time window and dead letters of any size


def test_an_event_far_after_its_message_timestamp_is_refused() -> None:
    ref = FrameRef.model_validate(_frame(captured_at="2099-01-01T00:00:00Z"))
    with pytest.raises(MessageDecodeError, match="clock-skew bound"):
        decode(FrameRef, encode(ref), produced_at=AT)
    # Within the bound, and without a message timestamp, it is a valid message.
    near = FrameRef.model_validate(_frame(captured_at=(AT + timedelta(seconds=30)).isoformat()))
    assert decode(FrameRef, encode(near), produced_at=AT) == near
    assert decode(FrameRef, encode(ref)) == ref


def test_old_events_are_accepted_but_an_unset_clock_is_not() -> None:
    old = FrameRef.model_validate(_frame(captured_at="2021-03-01T00:00:00Z"))
    assert decode(FrameRef, encode(old), produced_at=AT) == old  # a replay or a backlog
    epoch = FrameRef.model_validate(_frame(captured_at="1970-01-01T00:00:00Z"))
    with pytest.raises(MessageDecodeError, match="clock is not set"):
        decode(FrameRef, encode(epoch), produced_at=AT)


def test_an_estimate_is_timed_by_its_frame() -> None:
    frame = FrameRef.model_validate(_frame(captured_at="2099-01-01T00:00:00Z"))
    estimate = PositionEstimate(
        flow="prod",
        camera_id="cam-s1",
        frame=frame,
        estimator="position-estimator/0.1",
        model_version="test",
        estimated_at=AT,
    )
    with pytest.raises(MessageDecodeError, match="clock-skew bound"):
        decode(PositionEstimate, encode(estimate), produced_at=AT)


def test_an_absurd_sequence_number_is_refused() -> None:
    with pytest.raises(MessageDecodeError, match="seq"):
        decode(FrameRef, json.dumps(_frame(seq=10**15)).encode())
    # Captures number frames from their start time in ms (services/capture/decimation.py).
    ms_clock = int(datetime.now(UTC).timestamp() * 1000)
    assert decode(FrameRef, json.dumps(_frame(seq=ms_clock)).encode()).seq == ms_clock


def test_a_large_original_is_kept_truncated_so_the_dead_letter_fits() -> None:
    value = b"x" * 5_000_000
    letter = DeadLetter.of(
        topic="frames.v1",
        partition=2,
        offset=7,
        key=b"cam-s1",
        value=value,
        reason="Invalid JSON",
        service="position-estimator.prod",
    )
    assert letter.payload_truncated
    assert letter.payload_size == 5_000_000
    assert letter.payload == value[: len(letter.payload)]
    assert "original 5,000,000 bytes" in letter.reason
    assert len(encode(letter)) < 1_000_000  # the broker's default message limit
    small = DeadLetter.of(
        topic="frames.v1",
        partition=0,
        offset=1,
        key=None,
        value=b"{bad",
        reason="Invalid JSON",
        service="s",
    )
    assert small.payload == b"{bad"
    assert not small.payload_truncated
    assert small.reason == "Invalid JSON"


def test_a_message_built_without_a_version_carries_its_builds_version() -> None:
    class NextFrameRef(FrameRef):
        SCHEMA_VERSION = 4

    data = dict(EXAMPLES[FrameRef][0])
    data.pop("schema_version", None)
    assert NextFrameRef.model_validate(data).schema_version == 4
    assert FrameRef.model_validate(data).schema_version == FrameRef.SCHEMA_VERSION == 3
