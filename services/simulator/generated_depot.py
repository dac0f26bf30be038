"""Random but plausible depots and scenarios, deterministic per seed (the generalisation suite).

:func:`generate_depot` draws a facility: 2-6 parallel-ish tracks (straight, or one gentle
curve) with 4.5-6 m between neighbours, a gate at one or both ends (where locomotives enter
and leave; a closed end is a buffer stop), 4-20 cameras on the long walls or the roof, each
calibrated from its pose, and the shipped fleet plus 0-2 models that exist only in this
depot. Rules that must hold, checked before a depot is returned:

* it passes :func:`schemas.facility.parse_facility` (calibration within 3 px of the pose);
* no camera sees a whole locomotive: every stretch of track a camera sees is shorter than
  the shortest model (a camera that breaks this is drawn again);
* cameras are added where track is still unseen, so only small blind spots remain.

:func:`generate_scenario` draws a 240 s scenario for a depot as explicit
:class:`ScriptedLocomotive` keyframes (the random fleet cannot express zero-gap couples,
arrivals through a gate or buffer stops): coupled pairs, long standstills, shunting moves,
arrivals and departures through gates, camera outages. On each track one move happens at a
time and a moving locomotive stays between its stationary neighbours and inside closed ends,
so the ground truth is physically possible by construction; :func:`truth_problems` checks it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from schemas.facility import FacilityConfig, parse_facility
from schemas.geometry import (
    apply_homography,
    pinhole_extrinsics,
    pinhole_floor_homography,
    stretches,
)
from services.simulator.world import (
    CameraOutage,
    Keyframe,
    LightingKey,
    Scenario,
    ScriptedLocomotive,
    Simulation,
    stable_seed,
)

End = Literal["start", "end"]

SHIPPED_MODELS: tuple[tuple[str, float, tuple[int, int, int]], ...] = (
    ("TEM2", 16.97, (34, 120, 60)),
    ("ChME3", 17.22, (200, 60, 40)),
    ("2TE116", 18.15, (40, 90, 160)),
    ("TE33A", 21.70, (220, 170, 30)),
)
NEW_SERIES = ("VL11", "TGM6", "M62", "ES44", "DM12", "TEP70", "KZ8A", "TE10")
"""Series names for models that exist only in one generated depot."""

IMAGE_W, IMAGE_H = 1280, 720
CAMERA_SPACING_M = 4.0
"""Curved polylines get a point at least this often (several points per curve)."""
BLIND_SPOT_M = 2.0
"""Unseen track stretches up to this long are accepted as blind spots."""
MAX_CAMERA_TRIES = 400
SCENARIO_DURATION_S = 240.0

FLOWS: dict[str, Any] = {
    "prod": {
        "description": "Production estimators.",
        "position_estimator": {
            "weights": "models/depot-yolo.pt",
            "model_version": "depot-yolo-1",
            "imgsz": 352,
        },
        "plate_ocr": {"min_plate_confidence": 0.6},
        "state_estimator": {"stale_after_s": 30, "heartbeat_s": 5},
    },
}


@dataclass(frozen=True)
class GeneratedDepot:
    """A generated facility (its tracks say where the gates are)."""

    seed: int
    facility: FacilityConfig

    @property
    def gates(self) -> dict[str, tuple[End, ...]]:
        """track_id -> its ends that are gates; every other end is a buffer stop."""
        return {t.id: tuple(t.gates) for t in self.facility.tracks}

    def closed_ends(self, track_id: str) -> tuple[End, ...]:
        """Ends of ``track_id`` with a buffer stop (no locomotive may pass them)."""
        return tuple(e for e in ("start", "end") if e not in self.gates[track_id])


# --------------------------------------------------------------------------- depot


def _centre_line(rng: np.random.Generator, length_m: float) -> np.ndarray:
    """Base centre line as (s, x, y, heading): straight, or one gentle constant-radius curve."""
    s = np.linspace(0.0, length_m, max(2, math.ceil(length_m / CAMERA_SPACING_M) + 1))
    heading = np.zeros_like(s)
    if rng.random() < 0.5:
        radius = float(rng.uniform(150.0, 400.0))
        a, b = sorted(rng.uniform(0.1, 0.9, 2) * length_m)
        b = max(b, a + 15.0)
        sign = 1.0 if rng.random() < 0.5 else -1.0
        heading = sign * np.clip(s - a, 0.0, b - a) / radius
    # Integrate the heading (midpoint rule: exact for straights, very close on gentle curves).
    ds = np.diff(s)
    mid = (heading[:-1] + heading[1:]) / 2
    x = np.concatenate([[0.0], np.cumsum(ds * np.cos(mid))])
    y = np.concatenate([[0.0], np.cumsum(ds * np.sin(mid))])
    return np.c_[s, x, y, heading]


def _offset(line: np.ndarray, d: float) -> np.ndarray:
    """The centre line shifted ``d`` metres to its left (parallel, so never crossing)."""
    nx, ny = -np.sin(line[:, 3]), np.cos(line[:, 3])
    return np.c_[line[:, 1] + d * nx, line[:, 2] + d * ny]


def _simplify(points: np.ndarray) -> list[list[float]]:
    """Drop the inner points of straight runs (a straight track is a 2-point polyline)."""
    keep = [0]
    for i in range(1, len(points) - 1):
        a, b, c = points[keep[-1]], points[i], points[i + 1]
        cross = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
        if abs(cross) > 1e-6:
            keep.append(i)
    keep.append(len(points) - 1)
    return [[round(float(points[i][0]), 3), round(float(points[i][1]), 3)] for i in keep]


def _floor_hit(pose: dict[str, Any], u: float, v: float) -> tuple[float, float] | None:
    """Floor point shown at pixel (u, v), or None when that ray does not reach the floor."""
    k, r, _ = pinhole_extrinsics(pose["position"], pose["look_at"], pose["hfov_deg"], IMAGE_W,
                                 IMAGE_H)  # fmt: skip
    ray = r.T @ np.linalg.inv(k) @ np.array([u, v, 1.0])
    if ray[2] > -1e-3:
        return None
    c = np.asarray(pose["position"], dtype=np.float64)
    t = -c[2] / ray[2]
    if t * np.linalg.norm(ray) > 150.0:
        return None
    return float(c[0] + t * ray[0]), float(c[1] + t * ray[1])


def calibration_for_pose(pose: dict[str, Any]) -> list[dict[str, list[float]]] | None:
    """Four pixel <-> floor pairs seen inside the image, consistent with the pose, or None.

    Floor points are picked near the image corners (lower ones at 85 % down, upper ones as
    high as the floor is in view), rounded to 5 cm, and their pixels re-projected exactly.
    """
    h = pinhole_floor_homography(pose["position"], pose["look_at"], pose["hfov_deg"], IMAGE_W,
                                 IMAGE_H)  # fmt: skip
    for top in (0.3, 0.45, 0.6):
        pixels = [(0.1, 0.85), (0.9, 0.85), (0.1, top), (0.9, top)]
        floor = [_floor_hit(pose, a * IMAGE_W, b * IMAGE_H) for a, b in pixels]
        if any(f is None for f in floor):
            continue
        rounded = np.round(np.asarray(floor, dtype=np.float64) / 0.05) * 0.05
        projected = apply_homography(h, rounded)
        return [
            {"pixel": [round(float(u), 1), round(float(v), 1)], "floor": [float(x), float(y)]}
            for (u, v), (x, y) in zip(projected, rounded.round(2), strict=True)
        ]
    return None


def _models(rng: np.random.Generator) -> list[dict[str, Any]]:
    models = [
        {"name": n, "length_m": length, "plate_pattern": f"^{n}-\\d{{4}}$", "livery": list(c)}
        for n, length, c in SHIPPED_MODELS
    ]
    extra = int(rng.integers(0, 3))
    for name in rng.choice(NEW_SERIES, size=extra, replace=False):
        models.append(
            {
                "name": str(name),
                "length_m": round(float(rng.uniform(12.0, 25.0)), 2),
                "plate_pattern": f"^{name}-\\d{{4}}$",
                "livery": [int(c) for c in rng.integers(20, 236, 3)],
            }
        )
    return models


def _visible_stretches(
    pose: dict[str, Any], tracks: list[dict[str, Any]], step_m: float = 0.5
) -> dict[str, list[tuple[float, float]]]:
    """track_id -> stretches (position_m intervals) whose floor points the pose's image shows."""
    h = pinhole_floor_homography(pose["position"], pose["look_at"], pose["hfov_deg"], IMAGE_W,
                                 IMAGE_H)  # fmt: skip
    _k, r, t = pinhole_extrinsics(pose["position"], pose["look_at"], pose["hfov_deg"], IMAGE_W,
                                 IMAGE_H)  # fmt: skip
    out: dict[str, list[tuple[float, float]]] = {}
    for track in tracks:
        pos, pts = track["_samples"]
        depth = (r @ np.c_[pts, np.zeros(len(pts))].T).T[:, 2] + t[2]
        uv = apply_homography(h, pts)
        seen = (depth > 0.1) & (uv[:, 0] >= 0) & (uv[:, 0] <= IMAGE_W)
        seen &= (uv[:, 1] >= 0) & (uv[:, 1] <= IMAGE_H)
        intervals = stretches(pos, seen, step_m)
        if intervals:
            out[track["id"]] = intervals
    return out


def _track_samples(points: np.ndarray, step_m: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    pos = np.arange(0.0, cum[-1] + 1e-9, step_m)
    return pos, np.c_[np.interp(pos, cum, points[:, 0]), np.interp(pos, cum, points[:, 1])]


def _draw_pose(
    rng: np.random.Generator,
    line: np.ndarray,
    offsets: list[float],
    target_s: float,
    target_track: int,
) -> dict[str, Any]:
    """A camera on a long wall or the roof, looking at the floor near a target point."""
    heading = float(np.interp(target_s, line[:, 0], line[:, 3]))
    base = np.array([np.interp(target_s, line[:, 0], line[:, i]) for i in (1, 2)])
    left = np.array([-math.sin(heading), math.cos(heading)])
    along = np.array([math.cos(heading), math.sin(heading)])
    d_target = offsets[target_track]
    wall_low, wall_high = offsets[0] - 6.0, offsets[-1] + 6.0
    near_wall = min(d_target - wall_low, wall_high - d_target) <= 12.0
    if near_wall and rng.random() < 0.75:
        side = wall_low if d_target - wall_low <= wall_high - d_target else wall_high
        lateral = side + (1.0 if side == wall_low else -1.0) * float(rng.uniform(0.0, 1.5))
        height = float(rng.uniform(5.0, 12.0))
    else:
        lateral = d_target + float(rng.uniform(-7.0, 7.0))
        height = float(rng.uniform(7.0, 14.0))
    shift = float(rng.uniform(-6.0, 6.0))
    cam_xy = base + left * lateral + along * shift
    # Look at the target track, a little ahead or behind: varied look-at angles.
    look_xy = base + left * (d_target + float(rng.uniform(-1.5, 1.5)))
    look_xy = look_xy + along * float(rng.uniform(-4.0, 4.0))
    if np.linalg.norm(look_xy - cam_xy) < 3.0:
        look_xy = look_xy + along * (3.0 if rng.random() < 0.5 else -3.0)
    distance = math.hypot(*(look_xy - cam_xy)) + height
    # Narrower lenses from farther away keep each view to a part of a locomotive.
    hfov = float(np.clip(rng.uniform(45.0, 70.0) * 14.0 / max(distance, 8.0), 25.0, 80.0))
    return {
        "position": [round(float(cam_xy[0]), 2), round(float(cam_xy[1]), 2), round(height, 2)],
        "look_at": [round(float(look_xy[0]), 2), round(float(look_xy[1]), 2), 0.0],
        "hfov_deg": round(hfov, 1),
    }


def _new_coverage(
    tracks: list[dict[str, Any]],
    seen: dict[str, list[tuple[float, float]]],
    view: dict[str, list[tuple[float, float]]],
) -> float:
    """Metres of track ``view`` shows that ``seen`` does not."""
    gain = 0.0
    for track in tracks:
        pos = track["_samples"][0]
        new = np.zeros(len(pos), dtype=bool)
        for lo, hi in view.get(track["id"], []):
            new |= (pos >= lo) & (pos <= hi)
        for lo, hi in seen.get(track["id"], []):
            new &= ~((pos >= lo) & (pos <= hi))
        gain += float(new.sum()) * 0.5
    return gain


def _unseen(
    tracks: list[dict[str, Any]], seen: dict[str, list[tuple[float, float]]]
) -> list[tuple[int, float, float]]:
    """(track index, from, to) of every unseen stretch longer than a blind spot."""
    gaps = []
    for i, track in enumerate(tracks):
        pos = track["_samples"][0]
        covered = np.zeros(len(pos), dtype=bool)
        for lo, hi in seen.get(track["id"], []):
            covered |= (pos >= lo - 1e-6) & (pos <= hi + 1e-6)
        start = None
        for p, c in zip(pos, covered, strict=True):
            if not c and start is None:
                start = float(p)
            elif c and start is not None:
                if p - start > BLIND_SPOT_M:
                    gaps.append((i, start, float(p)))
                start = None
        if start is not None and pos[-1] - start > BLIND_SPOT_M:
            gaps.append((i, start, float(pos[-1])))
    return gaps


def generate_depot_data(seed: int) -> tuple[dict[str, Any], dict[str, tuple[End, ...]]]:
    """The raw facility mapping (as facility.yaml holds it) and the gates, for ``seed``."""
    for attempt in range(20):
        rng = np.random.default_rng(stable_seed("generated-depot", seed, attempt))
        drawn = _try_depot(rng, seed)
        if drawn is not None:
            return drawn
    raise RuntimeError(f"generated depot {seed}: no camera layout found; try another seed")


def _try_depot(
    rng: np.random.Generator, seed: int
) -> tuple[dict[str, Any], dict[str, tuple[End, ...]]] | None:
    n_tracks = int(rng.integers(2, 7))
    # Larger depots get shorter tracks: 20 cameras must be able to see all of it.
    length = float(rng.uniform(46.0, min(150.0, 46.0 + 600.0 / n_tracks**2)))
    spacings = rng.uniform(4.5, 6.0, n_tracks - 1)
    offsets = [0.0, *np.cumsum(spacings).tolist()]
    line = _centre_line(rng, length + 12.0)
    gate_kind = rng.choice(["start", "end", "both"], p=[0.4, 0.2, 0.4])
    tracks: list[dict[str, Any]] = []
    gates: dict[str, tuple[End, ...]] = {}
    for i, d in enumerate(offsets):
        # Parallel-ish: tracks may start and end a few metres apart.
        s0, s1 = float(rng.uniform(0.0, 6.0)), float(rng.uniform(length, min(length + 6.0, 150.0)))
        keep = (line[:, 0] > s0) & (line[:, 0] < s1)
        part = np.vstack(
            [
                [s0, *(np.interp(s0, line[:, 0], line[:, j]) for j in (1, 2, 3))],
                line[keep],
                [s1, *(np.interp(s1, line[:, 0], line[:, j]) for j in (1, 2, 3))],
            ]
        )
        points = _offset(part, d)
        track_id = f"T{i + 1}"
        ends: tuple[End, ...] = ("start", "end") if gate_kind == "both" else (str(gate_kind),)  # type: ignore[assignment]
        gates[track_id] = ends
        closed = [e for e in ("start", "end") if e not in ends]
        tracks.append(
            {
                "id": track_id,
                "name": f"Track {i + 1}"
                + (f" (buffer stop at the {closed[0]})" if closed else " (gates at both ends)"),
                "polyline": _simplify(points),
                "gates": list(ends),
                "_samples": _track_samples(points),
            }
        )
    models = _models(rng)
    shortest = min(m["length_m"] for m in models)
    cameras: list[dict[str, Any]] = []
    seen: dict[str, list[tuple[float, float]]] = {}
    tries = 0
    while tries < MAX_CAMERA_TRIES:
        gaps = _unseen(tracks, seen)
        if len(cameras) >= 20 or (not gaps and len(cameras) >= 4):
            break
        tries += 1
        if gaps:
            track_i, lo, hi = gaps[int(rng.integers(len(gaps)))]
            # Aim just past the start of the gap, so views extend what is already seen.
            target = lo + min(hi - lo, 10.0) / 2
        else:
            track_i, target = int(rng.integers(n_tracks)), float(rng.uniform(0.0, length))
        # Of a few candidate poses keep the one that sees most new track: fewer cameras.
        best: tuple[float, dict[str, Any], dict[str, list[tuple[float, float]]]] | None = None
        for _ in range(4):
            pose = _draw_pose(rng, line, offsets, target, track_i)
            view = _visible_stretches(pose, tracks)
            longest = max((hi - lo for iv in view.values() for lo, hi in iv), default=0.0)
            if not view or longest >= shortest - 1.0:
                continue  # sees nothing, or a whole locomotive: draw again
            gain = _new_coverage(tracks, seen, view)
            if best is None or gain > best[0]:
                best = (gain, pose, view)
        if best is None:
            continue
        _, pose, view = best
        calibration = calibration_for_pose(pose)
        if calibration is None:
            continue
        cam_id = f"cam-{len(cameras) + 1:02d}"
        cameras.append(
            {
                "id": cam_id,
                "source": f"rtsp://127.0.0.1:8554/{cam_id}",
                "fps": 2,
                "width": IMAGE_W,
                "height": IMAGE_H,
                "tracks": sorted(view),
                "pose": pose,
                "calibration": calibration,
            }
        )
        for tid, iv in view.items():
            seen.setdefault(tid, []).extend(iv)
    if _unseen(tracks, seen) or len(cameras) < 4:
        return None
    data = {
        "facility_id": f"gen-{seed}",
        "name": f"Generated depot {seed}",
        "tracks": [{k: v for k, v in t.items() if not k.startswith("_")} for t in tracks],
        "locomotive_models": models,
        "flows": FLOWS,
        "cameras": cameras,
    }
    return data, gates


def generate_depot(seed: int) -> GeneratedDepot:
    """A random plausible depot, the same for the same seed (validated as facility.yaml is)."""
    data, _ = generate_depot_data(seed)
    return GeneratedDepot(seed, parse_facility(data, f"generated depot {seed}"))


# --------------------------------------------------------------------------- scenario


@dataclass
class _Unit:
    """A locomotive being scripted: interval [lo, hi] on its track and its keyframes."""

    loco_id: str
    model: str
    length: float
    facing: int
    lo: float
    keys: list[tuple[float, float]]

    @property
    def hi(self) -> float:
        return self.lo + self.length

    @property
    def head(self) -> float:
        return self.hi if self.facing == 1 else self.lo

    def move_to(self, lo: float, t0: float, t1: float) -> None:
        if self.keys[-1][0] < t0:
            self.keys.append((t0, self.head))
        self.lo = lo
        self.keys.append((t1, self.head))


def generate_scenario(depot: GeneratedDepot, seed: int) -> Scenario:
    """A 240 s scenario on ``depot``: deterministic per (depot, seed), physically possible."""
    rng = np.random.default_rng(stable_seed("generated-scenario", depot.seed, seed))
    facility = depot.facility
    models = [(m.name, m.length_m) for m in facility.locomotive_models]
    units: list[tuple[str, _Unit]] = []
    counter = 0

    def new_unit(lo: float, model: tuple[str, float], t: float = 0.0) -> _Unit:
        nonlocal counter
        counter += 1
        facing = 1 if rng.random() < 0.5 else -1
        u = _Unit(f"G{counter}", model[0], model[1], facing, lo, [])
        u.keys.append((t, u.head))
        return u

    for track in facility.tracks:
        line: list[_Unit] = []
        length = track.length_m
        cursor = float(rng.uniform(0.5, 8.0))
        fill = float(rng.uniform(0.45, 0.85))
        while True:
            model = models[int(rng.integers(len(models)))]
            if cursor + model[1] > length - 0.5 or cursor > fill * length:
                break
            line.append(new_unit(cursor, model))
            coupled = rng.random() < 0.3
            cursor += model[1] + (0.0 if coupled else float(rng.uniform(1.0, 10.0)))
        _script_moves(rng, depot, track.id, length, line, models, new_unit)
        units += [(track.id, u) for u in line]
    outages = []
    cams = [c.id for c in facility.cameras]
    for _ in range(int(rng.integers(0, 3))):
        start = float(rng.uniform(20.0, 190.0))
        outages.append(
            CameraOutage(
                camera=cams[int(rng.integers(len(cams)))],
                from_s=round(start, 1),
                to_s=round(start + float(rng.uniform(10.0, 40.0)), 1),
            )
        )
    return Scenario(
        name=f"gen-d{depot.seed}-s{seed}",
        description=f"Generated scenario {seed} on generated depot {depot.seed}.",
        split="test",
        duration_s=SCENARIO_DURATION_S,
        lighting=[
            LightingKey(at_s=0, level=round(float(rng.uniform(0.8, 1.2)), 2)),
            LightingKey(at_s=SCENARIO_DURATION_S, level=round(float(rng.uniform(0.7, 1.2)), 2)),
        ],
        outages=outages,
        locomotives=[
            ScriptedLocomotive(
                id=u.loco_id,
                model=u.model,
                track=track_id,
                facing="end" if u.facing == 1 else "start",
                keyframes=[Keyframe(at_s=round(t, 3), head_m=round(h, 4)) for t, h in u.keys],
            )
            for track_id, u in units
        ],
    )


def _script_moves(
    rng: np.random.Generator,
    depot: GeneratedDepot,
    track_id: str,
    length: float,
    line: list[_Unit],
    models: list[tuple[str, float]],
    new_unit: Callable[[float, tuple[str, float], float], _Unit],
) -> None:
    """Shunting on one track, one move at a time: arrivals, departures, moves within.

    ``line`` holds the units inside the depot, ordered by position. A move takes a group of
    coupled units (or one of them, uncoupling it) and keeps it between its stationary
    neighbours and inside buffer stops; departed units stay outside their gate.
    """
    gates = depot.gates[track_id]
    # How far a unit may go: inside a buffer stop, or partly out through a gate.
    low_limit = 0.3 if "start" not in gates else -math.inf
    high_limit = length - 0.3 if "end" not in gates else math.inf
    departed: list[_Unit] = []
    t = float(rng.uniform(5.0, 60.0))
    for _ in range(int(rng.integers(0, 4))):
        if t > SCENARIO_DURATION_S - 40.0:
            break
        speed = float(rng.uniform(0.5, 1.5))
        kind = str(rng.choice(["within", "arrive", "depart"]))
        end: End = gates[int(rng.integers(len(gates)))]
        if kind == "arrive":
            model = models[int(rng.integers(len(models)))]
            edge = (line[0].lo if line else min(length, high_limit)) if end == "start" else None
            if end == "end":
                edge = line[-1].hi if line else max(0.0, low_limit)
            assert edge is not None
            room = edge if end == "start" else length - edge
            if room < model[1] + 1.0:
                continue
            gap = 0.0 if line and rng.random() < 0.4 else float(rng.uniform(0.5, room - model[1]))
            if end == "start":
                outside, parked = -model[1] - 3.0, edge - gap - model[1]
            else:
                outside, parked = length + 3.0, edge + gap
            unit = new_unit(outside, model, 0.0)
            group = [unit]
            line.insert(0 if end == "start" else len(line), unit)
            delta = parked - outside
        elif line:
            a, b = _group(rng, line, 0 if kind == "depart" and end == "start" else None,
                          len(line) - 1 if kind == "depart" and end == "end" else None)  # fmt: skip
            group = line[a : b + 1]
            g_lo, g_hi = group[0].lo, group[-1].hi
            if kind == "depart":
                delta = (-g_hi - 3.0) if end == "start" else (length + 3.0 - g_lo)
                del line[a : b + 1]
                departed += group
            else:
                lo_bound = line[a - 1].hi if a > 0 else max(low_limit, -(g_hi - g_lo) + 1.0)
                hi_bound = line[b + 1].lo if b + 1 < len(line) else min(high_limit, length - 1.0)
                if b + 1 == len(line) and high_limit == math.inf:
                    hi_bound = length + (g_hi - g_lo) - 1.0
                free = hi_bound - lo_bound - (g_hi - g_lo)
                if free < 1.0:
                    continue
                pick = rng.random()
                if pick < 0.25 and a > 0:
                    target = lo_bound  # couple onto the neighbour below (zero gap)
                elif pick < 0.5 and b + 1 < len(line):
                    target = hi_bound - (g_hi - g_lo)  # couple onto the neighbour above
                else:
                    target = lo_bound + float(rng.uniform(0.0, free))
                delta = target - g_lo
        else:
            continue
        t1 = t + abs(delta) / speed
        for unit in group:
            unit.move_to(unit.lo + delta, t, t1)
        t = t1 + float(rng.uniform(5.0, 70.0))
    line.extend(departed)


def _group(
    rng: np.random.Generator, line: list[_Unit], first: int | None, last: int | None
) -> tuple[int, int]:
    """Indices [a, b] of units that move together: one unit and, mostly, those coupled to it."""
    i = first if first is not None else last if last is not None else int(rng.integers(len(line)))
    a = b = i
    if rng.random() < 0.7:
        while a > 0 and abs(line[a - 1].hi - line[a].lo) < 1e-6:
            a -= 1
        while b + 1 < len(line) and abs(line[b].hi - line[b + 1].lo) < 1e-6:
            b += 1
    if first is not None:
        a = 0
    if last is not None:
        b = len(line) - 1
    return a, b


def truth_problems(depot: GeneratedDepot, scenario: Scenario, seed: int = 1) -> list[str]:
    """Every tick where the scenario's ground truth is physically impossible.

    Two locomotives inside the depot must not overlap on one track (touching is coupled), and
    none may stand past a buffer stop.
    """
    sim = Simulation(depot.facility, scenario, seed, tick_s=0.5)
    problems: list[str] = []
    lengths = {t.id: t.length_m for t in depot.facility.tracks}
    for tick in range(sim.ticks):
        truth = sim.ground_truth(sim.state(tick))
        by_track: dict[str, list[tuple[float, float, str]]] = {}
        for x in truth.locomotives:
            lo, hi = sorted((x.head_m, x.tail_m))
            closed = depot.closed_ends(x.track_id)
            if ("start" in closed and lo < -1e-6) or (
                "end" in closed and hi > lengths[x.track_id] + 1e-6
            ):
                problems.append(f"tick {tick}: {x.locomotive_id} is past a buffer stop")
            by_track.setdefault(x.track_id, []).append((lo, hi, x.locomotive_id))
        for track, spans in by_track.items():
            spans.sort()
            for (_, hi_a, a), (lo_b, _, b) in itertools.pairwise(spans):
                if lo_b < hi_a - 1e-3:
                    problems.append(f"tick {tick}: {a} and {b} overlap on {track}")
    return problems
