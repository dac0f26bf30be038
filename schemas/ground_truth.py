"""``ground-truth.v1``: what the simulator really placed where (evaluation only)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from schemas.base import Identifier, Message, UtcDatetime, WireModel


class TrueLocomotive(WireModel):
    """A locomotive as the simulator placed it."""

    locomotive_id: str = Field(description="Simulator id of the locomotive.")
    track_id: Identifier = Field(description="Track it stands on.")
    head_m: float = Field(description="True head position along the track, metres.")
    tail_m: float = Field(description="True tail position along the track, metres.")
    model: str = Field(description="True locomotive model.")
    plate: str = Field(description="True plate text.")


class GroundTruth(Message):
    """The true facility state at one simulator tick."""

    TOPIC: ClassVar[str] = "ground-truth.v1"
    KEY_FIELD: ClassVar[str] = "facility_id"

    facility_id: Identifier = Field(description="Facility id (the Kafka key).")
    scenario: str = Field(description="Scenario name.")
    seed: int = Field(description="Scenario seed.")
    tick: int = Field(ge=0, description="Simulator tick number.")
    at: UtcDatetime = Field(
        description="When these positions held: the wall-clock time the simulator served the "
        "tick's frames when serving live (so it matches frame capture times), the simulated "
        "time in offline renders."
    )
    locomotives: list[TrueLocomotive] = Field(default_factory=list, description="All locomotives.")
    cameras_down: list[Identifier] = Field(
        default_factory=list, description="Cameras the scenario has dropped out at this tick."
    )
