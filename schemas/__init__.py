"""Data contracts of depotwatch: one pydantic model per Kafka topic, plus the facility config.

Import message models from here; see :mod:`schemas.topics` for the topic catalogue.
"""

from schemas.base import Message, MessageDecodeError, decode, encode, utc_now
from schemas.deadletter import DeadLetter
from schemas.estimates import (
    BoundingBox,
    Detection,
    IdentityEstimate,
    PositionEstimate,
    TrackObservation,
)
from schemas.facility import ConfigError, FacilityConfig, load_facility
from schemas.facility_state import CameraHealth, FacilityState, LocomotiveState, TrackState
from schemas.frames import FrameRef
from schemas.ground_truth import GroundTruth, TrueLocomotive

__all__ = [
    "BoundingBox",
    "CameraHealth",
    "ConfigError",
    "DeadLetter",
    "Detection",
    "FacilityConfig",
    "FacilityState",
    "FrameRef",
    "GroundTruth",
    "IdentityEstimate",
    "LocomotiveState",
    "Message",
    "MessageDecodeError",
    "PositionEstimate",
    "TrackObservation",
    "TrackState",
    "TrueLocomotive",
    "decode",
    "encode",
    "load_facility",
    "utc_now",
]
