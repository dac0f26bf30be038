"""The facility facts and tuning the fusion tracker needs, derived once from the config."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

from schemas.facility import FacilityConfig, StateEstimatorSettings
from services.state_estimator.coverage import (
    Interval,
    TrackInImage,
    facility_coverage,
    facility_sightlines,
)


@dataclass(frozen=True)
class FusionConfig:
    """Facility geometry and the flow's tuning; build it with :meth:`from_facility`."""

    facility_id: str
    flow: str
    track_ids: tuple[str, ...]
    model_lengths: dict[str, float]
    plate_patterns: dict[str, str]
    coverage: dict[str, dict[str, list[Interval]]]
    """camera -> track -> stretches of the track inside the camera's image."""
    sightlines: dict[str, dict[str, TrackInImage]] = field(default_factory=dict)
    """Where each track lies in each camera's image (for occlusion by nearer locomotives)."""
    track_lengths: dict[str, float] = field(default_factory=dict)
    gates: dict[str, frozenset[str]] = field(default_factory=dict)
    """track -> its ends ("start", "end") locomotives can pass; absent: both."""
    camera_ids: tuple[str, ...] = ()
    disabled_cameras: frozenset[str] = frozenset()
    uncalibrated_cameras: frozenset[str] = frozenset()
    """Browser cameras without calibration: their estimates place nothing."""
    tuning: StateEstimatorSettings = field(default_factory=StateEstimatorSettings)

    @classmethod
    def from_facility(
        cls, cfg: FacilityConfig, flow: str, settings: StateEstimatorSettings | None = None
    ) -> FusionConfig:
        """Derive the tracker's config from the facility config and the flow's settings."""
        return cls(
            facility_id=cfg.facility_id,
            flow=flow,
            track_ids=tuple(t.id for t in cfg.tracks),
            model_lengths={m.name: m.length_m for m in cfg.locomotive_models},
            plate_patterns={m.name: m.plate_pattern for m in cfg.locomotive_models},
            coverage=facility_coverage(cfg),
            sightlines=facility_sightlines(cfg),
            track_lengths={t.id: t.length_m for t in cfg.tracks},
            gates={t.id: frozenset(t.gates) for t in cfg.tracks},
            camera_ids=tuple(c.id for c in cfg.cameras),
            disabled_cameras=frozenset(c.id for c in cfg.cameras if not c.enabled),
            uncalibrated_cameras=frozenset(c.id for c in cfg.cameras if not c.calibrated),
            tuning=settings or StateEstimatorSettings(),
        )

    @cached_property
    def plate_res(self) -> dict[str, re.Pattern[str]]:
        """Compiled plate pattern per model."""
        return {name: re.compile(p) for name, p in self.plate_patterns.items()}

    def length_misfit(self, length_m: float) -> float:
        """How far ``length_m`` is from the nearest model length (inf with no models)."""
        return min((abs(m - length_m) for m in self.model_lengths.values()), default=float("inf"))

    def passable(self, track_id: str, position_m: float) -> bool:
        """Whether a locomotive end may stand at ``position_m``: on the track, or beyond an
        end of it that is a gate (never beyond a buffer stop)."""
        length = self.track_lengths.get(track_id)
        if length is None or 0.0 <= position_m <= length:
            return True
        gates = self.gates.get(track_id, frozenset({"start", "end"}))
        return ("start" if position_m < 0.0 else "end") in gates

    @cached_property
    def shortest_model_m(self) -> float:
        """Length of the shortest model: every locomotive is at least this long."""
        return min(self.model_lengths.values(), default=0.0)
