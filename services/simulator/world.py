"""The simulated depot: scenarios (YAML) and where every locomotive is at a given time.

Pure and deterministic: a scenario plus its seed fixes every locomotive, plate number,
livery shade, lighting level and camera outage, so two runs produce the same world.

A scenario file lists locomotives with keyframes of their head position along a track;
between keyframes the locomotive moves with a smooth (ease-in/ease-out) profile. A
``random_fleet`` section adds seeded random locomotives, which the dataset scenarios use for
variety. Positions follow the facility convention: ``head_m``/``tail_m`` are arc lengths
along the track polyline; a locomotive "facing start" has its head at the smaller position.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import Field, ValidationError, model_validator

from schemas.base import Identifier, StrictModel
from schemas.facility import FacilityConfig, LocomotiveModel
from schemas.ground_truth import GroundTruth, TrueLocomotive

SCENARIO_PACKAGE = "services.simulator.scenarios"
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
"""Simulated clock origin when a scenario does not set ``start``."""


class ScenarioError(ValueError):
    """A scenario file cannot be used; the message names the problem and the fix."""


class Keyframe(StrictModel):
    """Head position of a locomotive at a time; it moves smoothly between keyframes."""

    at_s: float = Field(ge=0, description="Seconds from the scenario start.")
    head_m: float = Field(description="Head position along the track, metres (may be off-track).")


class ScriptedLocomotive(StrictModel):
    """A locomotive the scenario moves explicitly."""

    id: str = Field(min_length=1, max_length=40, description="Simulator id, e.g. L1.")
    model: str | None = Field(default=None, description="Model name; seeded random if absent.")
    number: int | None = Field(default=None, ge=0, le=9999, description="Plate number.")
    track: Identifier = Field(description="Track id.")
    facing: Literal["start", "end"] = Field(
        default="end",
        description="Direction the head points: 'end' = head at the larger position.",
    )
    keyframes: list[Keyframe] = Field(min_length=1, description="Head positions over time.")

    @model_validator(mode="after")
    def _sorted(self) -> ScriptedLocomotive:
        times = [k.at_s for k in self.keyframes]
        if times != sorted(times):
            raise ValueError(f"locomotive {self.id}: keyframes must be in time order")
        return self


class RandomFleet(StrictModel):
    """Seeded random locomotives: parked or slowly moving, spread over the tracks."""

    count: int = Field(ge=0, le=30, description="How many locomotives.")
    moving_fraction: float = Field(default=0.3, ge=0, le=1, description="Share that move.")
    max_speed_mps: float = Field(default=1.5, gt=0, le=10, description="Top speed of moves.")
    min_gap_m: float = Field(default=0.0, ge=0, description="Minimum gap on one track, metres.")
    close_pairs: int = Field(default=0, ge=0, description="Pairs placed 0-1.5 m apart.")


class CameraOutage(StrictModel):
    """A camera that stops delivering frames for a while."""

    camera: Identifier
    from_s: float = Field(ge=0)
    to_s: float = Field(gt=0)


class LightingKey(StrictModel):
    """Global light level at a time (1.0 = normal; it is interpolated linearly)."""

    at_s: float = Field(ge=0)
    level: float = Field(gt=0, le=2)


class Scenario(StrictModel):
    """One scenario file."""

    name: str = Field(min_length=1)
    description: str = ""
    split: Literal["demo", "train", "val", "test"] = Field(
        default="demo", description="Which dataset split may use this scenario."
    )
    duration_s: float = Field(gt=0, description="Length of the scenario, seconds.")
    start: datetime | None = Field(default=None, description="Simulated start time (UTC).")
    lighting: list[LightingKey] = Field(default_factory=lambda: [LightingKey(at_s=0, level=1.0)])
    noise_sigma: float = Field(default=2.0, ge=0, le=40, description="Sensor noise, grey levels.")
    outages: list[CameraOutage] = Field(default_factory=list)
    locomotives: list[ScriptedLocomotive] = Field(default_factory=list)
    random_fleet: RandomFleet | None = None


@dataclass(frozen=True)
class LocomotiveIdentity:
    """Everything fixed about one simulated locomotive."""

    locomotive_id: str
    model: LocomotiveModel
    plate: str
    livery_bgr: tuple[int, int, int]
    track_id: str
    facing: int  # +1: head at the larger position; -1: head at the smaller position
    keyframes: tuple[tuple[float, float], ...]  # (at_s, head_m)


@dataclass(frozen=True)
class Placement:
    """Where a locomotive is at one instant."""

    identity: LocomotiveIdentity
    head_m: float
    tail_m: float

    @property
    def locomotive_id(self) -> str:
        """Simulator id."""
        return self.identity.locomotive_id


@dataclass(frozen=True)
class WorldState:
    """The whole depot at one tick."""

    tick: int
    t_s: float
    at: datetime
    placements: tuple[Placement, ...]
    light_level: float
    noise_sigma: float
    cameras_down: frozenset[str]


def stable_seed(*parts: object) -> int:
    """A 32-bit seed derived from values; unlike ``hash()`` it is the same in every process."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _ease(u: float) -> float:
    """Smoothstep: locomotives accelerate and brake instead of jumping to speed."""
    u = min(1.0, max(0.0, u))
    return u * u * (3.0 - 2.0 * u)


def head_at(keyframes: tuple[tuple[float, float], ...], t_s: float) -> float:
    """Head position at time ``t_s`` from keyframes (held before the first and after the last)."""
    if t_s <= keyframes[0][0]:
        return keyframes[0][1]
    for (t0, p0), (t1, p1) in itertools.pairwise(keyframes):
        if t_s <= t1:
            if t1 - t0 < 1e-9:
                return p1
            return p0 + (p1 - p0) * _ease((t_s - t0) / (t1 - t0))
    return keyframes[-1][1]


def plate_text(model: LocomotiveModel, number: int) -> str:
    """Plate text ``<series>-<4 digits>``, checked against the model's plate pattern."""
    text = f"{model.name}-{number:04d}"
    pattern = getattr(model, "plate_pattern", None)
    if pattern and not re.match(pattern, text):
        raise ScenarioError(
            f"plate {text!r} does not match model {model.name}'s plate_pattern {pattern!r}; "
            "fix the pattern in facility.yaml"
        )
    return text


def _livery(model: LocomotiveModel, rng: np.random.Generator) -> tuple[int, int, int]:
    """Model livery (RGB in the config) as BGR, with a small per-unit shade variation."""
    rgb = np.asarray(getattr(model, "livery", None) or (128, 128, 128), dtype=np.float64)
    shade = rgb * rng.uniform(0.85, 1.12) + rng.normal(0, 6, 3)
    r, g, b = np.clip(shade, 0, 255).astype(int).tolist()
    return (b, g, r)


class Simulation:
    """A scenario bound to a facility and a seed: ask it for the world at any tick."""

    def __init__(
        self, facility: FacilityConfig, scenario: Scenario, seed: int, tick_s: float = 0.5
    ) -> None:
        if tick_s <= 0:
            raise ScenarioError("tick_s must be positive")
        self.facility = facility
        self.scenario = scenario
        self.seed = seed
        self.tick_s = tick_s
        self.start = scenario.start.astimezone(UTC) if scenario.start else EPOCH
        self.identities = self._build_identities()

    @property
    def ticks(self) -> int:
        """Number of ticks in the scenario."""
        return int(self.scenario.duration_s / self.tick_s) + 1

    def _build_identities(self) -> tuple[LocomotiveIdentity, ...]:
        rng = np.random.default_rng(stable_seed("fleet", self.scenario.name, self.seed))
        models = list(self.facility.locomotive_models)
        track_ids = {t.id for t in self.facility.tracks}
        used_numbers: set[str] = set()
        out: list[LocomotiveIdentity] = []

        def identity(
            loco_id: str,
            model_name: str | None,
            number: int | None,
            track: str,
            facing: int,
            keys: tuple[tuple[float, float], ...],
        ) -> LocomotiveIdentity:
            if track not in track_ids:
                raise ScenarioError(
                    f"scenario {self.scenario.name}: locomotive {loco_id} is on unknown track "
                    f"{track!r}; use one of {sorted(track_ids)}"
                )
            if model_name is None:
                model = models[int(rng.integers(len(models)))]
            else:
                try:
                    model = self.facility.locomotive_model(model_name)
                except KeyError:
                    known = [m.name for m in models]
                    raise ScenarioError(
                        f"scenario {self.scenario.name}: locomotive {loco_id} has unknown model "
                        f"{model_name!r}; use one of {known}"
                    ) from None
            while True:
                num = number if number is not None else int(rng.integers(0, 10000))
                text = plate_text(model, num)
                if text not in used_numbers or number is not None:
                    break
            used_numbers.add(text)
            return LocomotiveIdentity(
                locomotive_id=loco_id,
                model=model,
                plate=text,
                livery_bgr=_livery(model, rng),
                track_id=track,
                facing=facing,
                keyframes=keys,
            )

        for loco in self.scenario.locomotives:
            keys = tuple((k.at_s, k.head_m) for k in loco.keyframes)
            facing = 1 if loco.facing == "end" else -1
            out.append(identity(loco.id, loco.model, loco.number, loco.track, facing, keys))
        if self.scenario.random_fleet is not None:
            out += self._random_fleet(self.scenario.random_fleet, rng, identity, models)
        return tuple(out)

    def _random_fleet(
        self,
        fleet: RandomFleet,
        rng: np.random.Generator,
        identity: Callable[..., LocomotiveIdentity],
        models: list[LocomotiveModel],
    ) -> list[LocomotiveIdentity]:
        """Seeded random locomotives, kept from overlapping on a track."""
        out: list[LocomotiveIdentity] = []
        occupied: dict[str, list[tuple[float, float]]] = {t.id: [] for t in self.facility.tracks}
        duration = self.scenario.duration_s
        pairs_left = fleet.close_pairs
        tries = 0
        while len(out) < fleet.count and tries < fleet.count * 60:
            tries += 1
            track = self.facility.tracks[int(rng.integers(len(self.facility.tracks)))]
            model = models[int(rng.integers(len(models)))]
            length = model.length_m
            facing = 1 if rng.random() < 0.5 else -1
            moving = rng.random() < fleet.moving_fraction
            track_len = track.length_m
            lo_ext, hi_ext = -length * 0.6, track_len + length * 0.6
            if pairs_left > 0 and occupied[track.id]:
                # Put this one 0-1.5 m beside an existing one: the hard "close together" case.
                a0, a1 = occupied[track.id][-1]
                gap = float(rng.uniform(0.0, 1.5))
                lo, hi = (
                    (a1 + gap, a1 + gap + length)
                    if rng.random() < 0.5
                    else (
                        a0 - gap - length,
                        a0 - gap,
                    )
                )
                pairs_left -= 1
                moving = False
            else:
                lo = float(rng.uniform(lo_ext, hi_ext - length))
                hi = lo + length
            margin = fleet.min_gap_m
            span = (lo - margin, hi + margin)
            if moving:
                dist = float(rng.uniform(3.0, 15.0)) * (1 if rng.random() < 0.5 else -1)
                span = (min(lo, lo + dist) - margin, max(hi, hi + dist) + margin)
            if any(span[0] < b and a < span[1] for a, b in occupied[track.id]):
                continue
            # Keep the whole swept span: a moving locomotive must not drive into another.
            occupied[track.id].append((span[0] + margin, span[1] - margin))
            head0 = hi if facing == 1 else lo
            if moving:
                t0 = float(rng.uniform(0, duration * 0.5))
                t1 = min(duration, t0 + abs(dist) / float(rng.uniform(0.3, fleet.max_speed_mps)))
                keys: tuple[tuple[float, float], ...] = ((t0, head0), (t1, head0 + dist))
            else:
                keys = ((0.0, head0),)
            out.append(identity(f"R{len(out) + 1}", model.name, None, track.id, facing, keys))
        return out

    def state(self, tick: int) -> WorldState:
        """The world at ``tick`` (time ``tick * tick_s`` from the scenario start)."""
        t_s = tick * self.tick_s
        placements = []
        for ident in self.identities:
            head = head_at(ident.keyframes, t_s)
            tail = head - ident.facing * ident.model.length_m
            placements.append(Placement(identity=ident, head_m=head, tail_m=tail))
        down = frozenset(o.camera for o in self.scenario.outages if o.from_s <= t_s < o.to_s)
        return WorldState(
            tick=tick,
            t_s=t_s,
            at=self.start + timedelta(seconds=t_s),
            placements=tuple(placements),
            light_level=self.light_level(t_s),
            noise_sigma=self.scenario.noise_sigma,
            cameras_down=down,
        )

    def light_level(self, t_s: float) -> float:
        """Interpolated light level at ``t_s``."""
        keys = sorted(self.scenario.lighting, key=lambda k: k.at_s)
        times = [k.at_s for k in keys]
        levels = [k.level for k in keys]
        return float(np.interp(t_s, times, levels))

    def ground_truth(self, state: WorldState) -> GroundTruth:
        """The ``ground-truth.v1`` message for a state: locomotives that are on a track."""
        locos = []
        for p in state.placements:
            track = self.facility.track(p.identity.track_id)
            lo, hi = sorted((p.head_m, p.tail_m))
            if hi < 0 or lo > track.length_m:
                continue  # still outside the depot (arriving) or gone (departed)
            locos.append(
                TrueLocomotive(
                    locomotive_id=p.locomotive_id,
                    track_id=p.identity.track_id,
                    head_m=round(p.head_m, 4),
                    tail_m=round(p.tail_m, 4),
                    model=p.identity.model.name,
                    plate=p.identity.plate,
                )
            )
        return GroundTruth(
            facility_id=self.facility.facility_id,
            scenario=self.scenario.name,
            seed=self.seed,
            tick=state.tick,
            at=state.at,
            locomotives=locos,
            cameras_down=sorted(state.cameras_down),
        )


def parse_scenario(data: object, source: str) -> Scenario:
    """Validate a parsed scenario; raises :class:`ScenarioError` with one line per problem."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: a scenario must be a YAML mapping with name, duration_s")
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "<scenario>"
            lines.append(f"{source}: {loc}: {err['msg'].removeprefix('Value error, ')}")
        raise ScenarioError("\n".join(lines)) from None


def builtin_scenarios() -> list[str]:
    """Names of the scenarios shipped with the simulator."""
    files = resources.files(SCENARIO_PACKAGE).iterdir()
    return sorted(f.name.removesuffix(".yaml") for f in files if f.name.endswith(".yaml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A built-in scenario by name, or a scenario YAML file by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        try:
            text = path.read_text()
        except OSError as exc:
            raise ScenarioError(
                f"{path}: cannot be read ({exc.strerror}); pass a built-in name "
                f"({', '.join(builtin_scenarios())}) or a YAML file"
            ) from None
        source = str(path)
    else:
        res = resources.files(SCENARIO_PACKAGE) / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ScenarioError(
                f"no scenario {str(name_or_path)!r}; use one of "
                f"{', '.join(builtin_scenarios())} or a path to a YAML file"
            )
        text = res.read_text()
        source = f"scenario {name_or_path}"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{source}: not valid YAML ({exc}); fix the syntax") from None
    return parse_scenario(data, source)
