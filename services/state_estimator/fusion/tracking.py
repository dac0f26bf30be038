"""Following known locomotives: predict, update from detected ends, lose existence.

Each locomotive is a rigid body on its track: both true ends move with one speed
(alpha-beta filter). A detected end updates its own end; an end that has not been detected
for ``rigid_after_s`` (hidden, outside the depot, never seen) follows the seen end at the
locomotive's length: the model length when readings name the model, the assumed model of a
lone-end start, else the measured length.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from services.state_estimator.fusion.association import Detection
from services.state_estimator.fusion.config import FusionConfig
from services.state_estimator.fusion.identity import cab_known, cab_plate_m, read_model
from services.state_estimator.fusion.state import END_KINDS, EndKind, LooseEnd, TrackedLocomotive
from services.state_estimator.fusion.visibility import on_track

MAX_CAMERAS = 8
"""Cameras remembered per locomotive (shown on the dashboard; the newest win)."""


def seconds(a: datetime, b: datetime) -> float:
    """``a - b`` in seconds."""
    return (a - b).total_seconds()


def other(kind: EndKind) -> EndKind:
    """The other end."""
    return "tail" if kind == "head" else "head"


def raw_end(loco: TrackedLocomotive, kind: EndKind, offset_m: float) -> float:
    """Where the detector places this end: ``offset_m`` inside the true end."""
    inward = loco.direction if kind == "head" else -loco.direction
    return loco.end_m(kind) + inward * offset_m


def target_length(config: FusionConfig, loco: TrackedLocomotive, read: str | None) -> float:
    """The length the locomotive is held to: the ``read`` model, the assumed model, else the
    measured length."""
    model = read or loco.assumed_model
    if model is not None and model in config.model_lengths:
        return config.model_lengths[model]
    return loco.length_m


def _faded_travel(config: FusionConfig, x: float) -> float:
    """Distance per m/s of measured speed covered from the measurement to ``x`` seconds after
    it: the speed holds before the measurement and fades linearly to zero over
    ``velocity_memory_s`` after it (a hidden locomotive is not driven on for ever)."""
    memory = config.tuning.velocity_memory_s
    if x <= 0:
        return x
    if x >= memory:
        return memory / 2
    return x - x * x / (2 * memory)


def travel(
    config: FusionConfig,
    velocity_mps: float,
    measured_at: datetime | None,
    t_from: datetime,
    t_to: datetime,
) -> float:
    """How far a speed measured at ``measured_at`` moves a track from ``t_from`` to ``t_to``.

    A function of the times alone, so it does not depend on the order estimates arrive in:
    cameras lag differently, and a track moved forward and back again ends where it began.
    """
    if velocity_mps == 0.0:
        return 0.0
    ref = measured_at or t_from
    return velocity_mps * (
        _faded_travel(config, seconds(t_to, ref)) - _faded_travel(config, seconds(t_from, ref))
    )


def speed_at(
    config: FusionConfig, velocity_mps: float, measured_at: datetime | None, at: datetime
) -> float:
    """The faded speed at ``at`` of a speed measured at ``measured_at``."""
    if measured_at is None:
        return velocity_mps
    x = seconds(at, measured_at)
    return velocity_mps * max(0.0, 1.0 - max(0.0, x) / config.tuning.velocity_memory_s)


def correct_speed(
    config: FusionConfig, track: TrackedLocomotive | LooseEnd, residual_m: float, at: datetime
) -> None:
    """The speed after a detection ``residual_m`` from the prediction (beta of the filter)."""
    t = config.tuning
    speed = (
        speed_at(config, track.velocity_mps, track.velocity_at, at) + t.velocity_gain * residual_m
    )
    track.velocity_mps = max(-t.max_speed_mps, min(t.max_speed_mps, speed))
    track.velocity_at = at if track.velocity_at is None else max(track.velocity_at, at)


def gate(config: FusionConfig, loco: TrackedLocomotive, kind: EndKind, at: datetime) -> float:
    """How far from its prediction a detection may be this end: the base gate, growing while
    the end goes unseen (its speed may have changed), up to the gate of an end never seen.
    An end never seen has the length's uncertainty on top, and grows while the whole body goes
    unseen (up to ``hidden_body_gate_m``)."""
    t = config.tuning
    seen = loco.seen_at(kind)
    if seen is None:
        body_unseen_s = max(0.0, seconds(at, loco.last_seen))
        grown = t.inferred_end_gate_m + t.gate_growth_mps * body_unseen_s
        return min(t.hidden_body_gate_m, grown)
    unseen_s = max(0.0, seconds(at, seen))
    return min(t.inferred_end_gate_m, t.association_gate_m + t.gate_growth_mps * unseen_s)


PASSING_MPS = 0.3
"""A track moving at least this fast (its faded speed) is driving, e.g. through a gate;
slower is standing (detection jitter of 0.2 m alone reads as 0.1 m/s)."""


def ahead(config: FusionConfig, loco: TrackedLocomotive, at: datetime) -> tuple[float, float]:
    """(extra gate, heading) on the side a driving locomotive moves to.

    Its speed fades while no camera confirms it, so a body that drove on unseen at its
    measured speed is further along than predicted (gen-d106-s1: an M62 leaving through a
    blind stretch at 1.1 m/s reappeared 7.5 m past the prediction, was taken for a new
    locomotive and extended back into the depot). Up to the distance its measured speed
    covers while unseen is allowed ahead; behind, the gate stays (``stop_where_hidden``
    handles one that stopped short).
    """
    if abs(loco.velocity_mps) < PASSING_MPS:
        return 0.0, 0.0
    unseen_s = max(0.0, seconds(at, loco.last_seen))
    return abs(loco.velocity_mps) * unseen_s, 1.0 if loco.velocity_mps > 0 else -1.0


def drove_out(config: FusionConfig, loco: TrackedLocomotive, at: datetime) -> bool:
    """Whether a locomotive last measured driving out through a gate would have left by now
    had it kept that speed, and no camera has seen it since (``rigid_after_s``).

    Its speed fades in the prediction, so one leaving through a stretch no camera shows
    stops short inside the gate and stands there for ever: nothing can show it empty
    (gen-d107-s3: a ChME3 stood 5 m inside for 28 s after it had gone). A locomotive partly
    outside, driving out, goes on: the judgement :func:`stop_where_hidden` makes for one not
    braking (this check does not look at braking). The
    measured speed is noisy: it must have taken the body ``association_gate_m`` past the gate
    (without that margin, dev lost 0.1-1.3 points on four cases by early drops).
    """
    t = config.tuning
    length = config.track_lengths.get(loco.track_id)
    if length is None or loco.velocity_at is None or abs(loco.velocity_mps) < PASSING_MPS:
        return False
    if seconds(at, loco.last_seen) <= t.rigid_after_s:
        return False
    lo, hi = loco.span
    if loco.velocity_mps < 0 and lo < 0.0:
        inside = hi  # driving out through the start
    elif loco.velocity_mps > 0 and hi > length:
        inside = length - lo
    else:
        return False
    coasted_s = max(0.0, seconds(at, loco.velocity_at))
    faded = _faded_travel(config, coasted_s)
    return abs(loco.velocity_mps) * (coasted_s - faded) >= inside + t.association_gate_m


def predict(config: FusionConfig, loco: TrackedLocomotive, at: datetime) -> None:
    """Move ``loco`` to event time ``at`` (earlier or later) with its speed (``travel``)."""
    shift = travel(config, loco.velocity_mps, loco.velocity_at, loco.updated_at, at)
    loco.head_m += shift
    loco.tail_m += shift
    loco.updated_at = at


BRAKING_DROP = 0.3
"""A locomotive last measured this share of its move's peak speed below the peak, and at
least ``BRAKING_DROP_MPS`` below it, was braking."""

BRAKING_DROP_MPS = 0.4
"""The least drop below the peak that counts as braking, so that the speed filter's jitter
on a slow move does not (chosen on the dev and extra sets, not measured as a noise level)."""


def braking(loco: TrackedLocomotive) -> bool:
    """Whether its last measured speed is well below the peak of its move: it was slowing
    down to stop (a locomotive driving out through a gate keeps its speed)."""
    drop = loco.peak_mps - abs(loco.velocity_mps)
    return drop >= max(BRAKING_DROP * loco.peak_mps, BRAKING_DROP_MPS)


COAST_SHARES = (0.25, 0.5, 0.75, 1.0)
"""How far back, as shares of the distance coasted, a coasting locomotive may have stopped."""


def stop_where_hidden(
    config: FusionConfig,
    loco: TrackedLocomotive,
    spot_m: float,
    at: datetime,
    hidden: Callable[[float], bool],
) -> bool:
    """A coasting locomotive (its speed not measured since ``velocity_at``, so the prediction
    carries it on with that speed fading) whose end a camera shows empty at ``spot_m`` may
    have stopped short, where no camera shows that end: a locomotive braking to a halt in a
    blind stretch was carried out of it by the prediction and then dropped for ends shown
    empty (gen-d111-s4). Pull it back toward where its speed was measured by the least share
    of the coasted distance at which the end is ``hidden``, and stop it there.

    Returns False (nothing changed) when it was not coasting, when it stands partly outside
    the depot (leaving through a gate faster than its faded speed says, it has gone on), or
    when no hidden place lies behind.
    """
    if loco.velocity_mps == 0.0 or loco.velocity_at is None:
        return False
    coasted = travel(config, loco.velocity_mps, loco.velocity_at, loco.velocity_at, at)
    if abs(coasted) < config.tuning.merge_m:
        return False
    if not all(on_track(config, loco.track_id, end_m) for end_m in loco.span) and not braking(loco):
        return False  # driving through a gate, not braking: it has gone on, out of the depot
    for share in COAST_SHARES:
        back = -coasted * share
        if hidden(spot_m + back):
            loco.head_m += back
            loco.tail_m += back
            loco.velocity_mps, loco.velocity_at = 0.0, at
            return True
    return False


def predict_end(config: FusionConfig, end: LooseEnd, at: datetime) -> None:
    """Move an unexplained end to event time ``at`` with its speed (one filter for all ends:
    an end driving in through a gate stays one end, not a trail of them)."""
    since = end.updated_at or end.last_seen
    end.position_m += travel(config, end.velocity_mps, end.velocity_at, since, at)
    end.updated_at = at


def _set_end(loco: TrackedLocomotive, kind: EndKind, value: float) -> None:
    if kind == "head":
        loco.head_m = value
    else:
        loco.tail_m = value


def _mark_seen(loco: TrackedLocomotive, kind: EndKind, at: datetime) -> None:
    seen = loco.seen_at(kind)
    at = at if seen is None else max(seen, at)
    if kind == "head":
        loco.head_seen_at = at
    else:
        loco.tail_seen_at = at


def update(
    config: FusionConfig,
    loco: TrackedLocomotive,
    detected: dict[EndKind, Detection],
    at: datetime,
    camera_id: str,
) -> None:
    """Fold the ends one frame detected of ``loco`` (already predicted to ``at``) in."""
    t = config.tuning
    direction = loco.direction
    for kind, det in detected.items():
        inward = direction if kind == "head" else -direction
        true = det.position_m - inward * t.end_label_offset_m
        if det.kind == kind:
            loco.label_agree += 1
        else:
            loco.label_swapped += 1
        if loco.seen_at(kind) is None:
            _set_end(loco, kind, true)  # first sighting replaces the assumed place
            loco.assumed_model = None
        else:
            residual = true - loco.end_m(kind)
            _set_end(loco, kind, loco.end_m(kind) + t.position_gain * residual)
            correct_speed(config, loco, residual, at)
        _mark_seen(loco, kind, at)
    _hold_length(config, loco, detected, at)
    speed = abs(loco.velocity_mps)
    loco.peak_mps = max(loco.peak_mps, speed) if speed >= PASSING_MPS else 0.0
    loco.existence = min(1.0, loco.existence + t.existence_hit * len(detected))
    loco.last_seen = max(loco.last_seen, at)
    if camera_id in loco.cameras:
        loco.cameras.remove(camera_id)
    loco.cameras = [*loco.cameras, camera_id][-MAX_CAMERAS:]
    _maybe_turn(loco)


def _hold_length(
    config: FusionConfig, loco: TrackedLocomotive, detected: dict[EndKind, Detection], at: datetime
) -> None:
    """Keep the body rigid: an end not seen lately follows the seen one at the length."""
    t = config.tuning
    model = read_model(config, loco)
    length = target_length(config, loco, model)
    direction = loco.direction
    for kind in END_KINDS:
        if kind in detected:
            continue
        seen = loco.seen_at(kind)
        if seen is None or seconds(at, seen) > t.rigid_after_s:
            anchor = loco.end_m(other(kind))
            sign = direction if kind == "tail" else -direction
            _set_end(loco, kind, anchor + sign * length)
    head_seen, tail_seen = loco.head_seen_at, loco.tail_seen_at
    both_recent = (
        head_seen is not None
        and tail_seen is not None
        and seconds(at, head_seen) <= t.rigid_after_s
        and seconds(at, tail_seen) <= t.rigid_after_s
    )
    if both_recent and model is not None:
        # Two measured ends and a known length: split the disagreement between the ends.
        correction = t.length_gain * (config.model_lengths[model] - loco.length_m) / 2
        loco.head_m -= direction * correction
        loco.tail_m += direction * correction


def _maybe_turn(loco: TrackedLocomotive) -> None:
    """Swap head and tail when the detector's labels say, consistently, it stands the other
    way round (it was started from swapped labels)."""
    if loco.label_swapped >= TURN_MIN_VOTES and loco.label_swapped >= 2 * loco.label_agree:
        loco.head_m, loco.tail_m = loco.tail_m, loco.head_m
        loco.head_seen_at, loco.tail_seen_at = loco.tail_seen_at, loco.head_seen_at
        loco.label_agree, loco.label_swapped = loco.label_swapped, loco.label_agree
        loco.plate_read_at = None  # read at what is now its tail


TURN_MIN_VOTES = 6
"""Swapped labels needed before a locomotive is turned round (a few swaps are detector noise:
up to a third of one camera's labels at steep side angles)."""


def follow_plate(
    config: FusionConfig, loco: TrackedLocomotive, plate_m: float, at: datetime
) -> None:
    """A plate read on ``loco`` while neither end is detected (both hidden): the plate is the
    best measure of where the cab is, so a locomotive seen only by its plate still moves.

    The plate hangs ``plate_inset_m`` inside the cab; the body follows rigidly.
    """
    t = config.tuning
    if any(
        seen is not None and seconds(at, seen) <= t.rigid_after_s
        for seen in (loco.head_seen_at, loco.tail_seen_at)
    ):
        return  # a detected end is the better measure
    predict(config, loco, at)
    cab = plate_m - loco.direction * t.plate_inset_m
    residual = cab - loco.head_m
    if abs(residual) > t.association_gate_m:
        return  # not where its cab can be: a neighbour's plate, or a cab that moved unseen
    length = target_length(config, loco, read_model(config, loco))
    loco.head_m += t.position_gain * residual
    loco.tail_m = loco.head_m + loco.direction * length
    correct_speed(config, loco, residual, at)


def plate_at_cab(
    config: FusionConfig, loco: TrackedLocomotive, plate_m: float, at: datetime
) -> bool:
    """Whether a plate read at ``plate_m`` at event time ``at`` hangs at ``loco``'s known cab
    (within ``plate_margin_m`` of where the cab stands then), not merely on its body."""
    if not cab_known(loco):
        return False
    head = loco.head_m + travel(config, loco.velocity_mps, loco.velocity_at, loco.updated_at, at)
    return abs(cab_plate_m(config, loco, head) - plate_m) <= config.tuning.plate_margin_m


def plate_read_lately(config: FusionConfig, loco: TrackedLocomotive, at: datetime) -> bool:
    """Whether a plate was read at ``loco``'s known cab within ``rigid_after_s`` of ``at``:
    then its cab is surely there, and a camera not detecting the cab end (hidden lower down,
    where the sightline model may not know what hides it) is no evidence that it has gone."""
    read = loco.plate_read_at
    return (
        read is not None
        and cab_known(loco)
        and abs(seconds(at, read)) <= config.tuning.rigid_after_s
    )


def missed(config: FusionConfig, loco: TrackedLocomotive) -> None:
    """A camera showed one of ``loco``'s ends and did not detect it."""
    loco.existence *= config.tuning.existence_miss
