"""The topic catalogue: every topic, its message model, key, partitions and topic config."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from schemas.base import Message
from schemas.deadletter import DeadLetter
from schemas.estimates import IdentityEstimate, PositionEstimate
from schemas.facility_state import FacilityState
from schemas.frames import FrameRef
from schemas.ground_truth import GroundTruth
from schemas.jobs import JobStatus

MESSAGE_MODELS: tuple[type[Message], ...] = (
    FrameRef,
    PositionEstimate,
    IdentityEstimate,
    FacilityState,
    GroundTruth,
    DeadLetter,
    JobStatus,
)


@dataclass(frozen=True)
class TopicSpec:
    """A concrete topic: name, model, partitions and broker-side config."""

    name: str
    model: type[Message]
    partitions: int
    config: dict[str, str] = field(default_factory=dict)

    @property
    def key_field(self) -> str:
        """Attribute of the model whose value is the Kafka key."""
        return self.model.KEY_FIELD


@dataclass(frozen=True)
class TopicLayout:
    """Partition counts and retention used when topics are created."""

    frame_partitions: int = 6
    estimate_partitions: int = 6
    frames_retention_ms: int = 24 * 3600 * 1000
    estimates_retention_ms: int = 7 * 24 * 3600 * 1000
    state_history_ms: int = 24 * 3600 * 1000


def topics_for(flows: Iterable[str], layout: TopicLayout | None = None) -> list[TopicSpec]:
    """Every topic the pipeline needs for the given flows."""
    lay = layout or TopicLayout()
    specs = [
        TopicSpec(
            FrameRef.topic_name(),
            FrameRef,
            lay.frame_partitions,
            {"cleanup.policy": "delete", "retention.ms": str(lay.frames_retention_ms)},
        ),
        TopicSpec(GroundTruth.topic_name(), GroundTruth, 1, {"cleanup.policy": "delete"}),
        TopicSpec(DeadLetter.topic_name(), DeadLetter, 1, {"cleanup.policy": "delete"}),
        # Job statuses, key: job id; the latest status of every job is kept.
        TopicSpec(JobStatus.topic_name(), JobStatus, 1, {"cleanup.policy": "compact"}),
    ]
    for flow in sorted(set(flows)):
        retention = {"cleanup.policy": "delete", "retention.ms": str(lay.estimates_retention_ms)}
        specs += [
            TopicSpec(
                PositionEstimate.topic_name(flow),
                PositionEstimate,
                lay.estimate_partitions,
                retention,
            ),
            TopicSpec(
                IdentityEstimate.topic_name(flow),
                IdentityEstimate,
                lay.estimate_partitions,
                retention,
            ),
            # One key (the facility id): the latest state survives compaction, and every state
            # younger than the history window too (the API's state history reads them).
            TopicSpec(
                FacilityState.topic_name(flow),
                FacilityState,
                1,
                {
                    "cleanup.policy": "compact",
                    "min.compaction.lag.ms": str(lay.state_history_ms),
                },
            ),
        ]
    return specs
