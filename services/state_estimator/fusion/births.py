"""Starting locomotives from ends no known locomotive explains.

* **Pairs.** An unexplained head and tail whose distance (label offset removed) fits a model
  length start a locomotive, if its body overlaps no known locomotive and holds no other
  unexplained end. The best-fitting pairs are taken first.
* **Lone ends.** An end whose partner is never detected is a locomotive when the partner can
  stand only where no camera shows it: beyond a gate (outside the depot), in a blind spot, or
  behind a locomotive on a nearer track. Every (direction, model) is a hypothesis; one whose
  far end a camera has shown since the end appeared is ruled out, and so is a body on the side
  of a cab away from its plate. A plate reading at the hypothesised cab picks the model. When
  both directions stay open, the end waits ``lone_end_wait_s`` for evidence, then the likelier
  one is taken (the far end outside the depot if the end moves: a locomotive passing through
  a gate; else the way more models fit, else towards the middle of the track); without a
  reading the middle-length model is placed (the smallest worst-case error). Later
  detections of the far end correct it.
* **Plates.** A plate read where no locomotive stands is evidence of a cab there: it supports
  a lone-end start whose model the plate names (its ends may be hidden from every camera).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.state_estimator.fusion.config import FusionConfig
from services.state_estimator.fusion.identity import dominant, vote_model
from services.state_estimator.fusion.state import (
    END_KINDS,
    FusionState,
    LooseEnd,
    TrackedLocomotive,
)
from services.state_estimator.fusion.tracking import (
    MAX_CAMERAS,
    PASSING_MPS,
    other,
    seconds,
    speed_at,
    travel,
)
from services.state_estimator.fusion.visibility import occluders_of, on_track, shows


@dataclass(frozen=True)
class Hypothesis:
    """Where a lone end's body may lie: ``direction`` from the end, a model and its length."""

    direction: float
    model: str
    length_m: float
    true_end_m: float
    far_end_m: float
    far_outside: bool


def overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def _body_free(
    config: FusionConfig,
    state: FusionState,
    track_id: str,
    span: tuple[float, float],
    ends: list[LooseEnd],
    exclude: tuple[int, ...],
    own_plates: frozenset[str] = frozenset(),
) -> bool:
    """No known locomotive overlaps ``span`` with the part of it that is certain (see
    :func:`certain_span`) and no other unexplained end stands inside it. A cab known only by
    readings of ``own_plates`` is the body's own cab read earlier, as it drove (a plate names
    one locomotive), not another locomotive's."""
    t = config.tuning
    for loco in state.locomotives:
        if loco.track_id == track_id and overlap(certain_span(config, loco), span) > t.overlap_m:
            return False
    if _end_inside(config, span, ends, exclude):
        return False
    lo, hi = span
    # A plate read well inside the body is another locomotive's cab (its own hangs by an end).
    inset = t.plate_inset_m + t.merge_m
    return not any(
        e.track_id == track_id
        and e.from_plate_only
        and e.end_id not in exclude
        and lo + inset < e.position_m < hi - inset
        and not (own_plates and plates_near(state, track_id, e.position_m, t.merge_m) <= own_plates)
        for e in state.loose_ends
    )


def plates_near(state: FusionState, track_id: str, position_m: float, reach_m: float) -> set[str]:
    """The plates of the waiting readings within ``reach_m`` of ``position_m``."""
    return {
        v.plate
        for v in state.pending_votes
        if v.plate and v.track_id == track_id and abs(v.position_m - position_m) <= reach_m
    }


def _end_inside(
    config: FusionConfig, span: tuple[float, float], ends: list[LooseEnd], exclude: tuple[int, ...]
) -> bool:
    """Whether an end (other than those in ``exclude``) stands well inside ``span``: the body
    would hold another locomotive's end."""
    lo, hi = span
    merge = config.tuning.merge_m
    return any(e.end_id not in exclude and lo + merge < e.position_m < hi - merge for e in ends)


def certain_span(config: FusionConfig, loco: TrackedLocomotive) -> tuple[float, float]:
    """The part of a locomotive's body that evidence fixes.

    Both ends seen: the whole body. Otherwise only the seen end (or, placed from a plate
    alone, the cab) is fixed, and the body is at least as long as the shortest model: the
    rest of an assumed length yields to a detected neighbour.
    """
    if loco.head_seen_at is not None and loco.tail_seen_at is not None:
        return loco.span
    anchor = loco.tail_m if loco.head_seen_at is None and loco.tail_seen_at else loco.head_m
    towards_body = loco.direction if anchor == loco.head_m else -loco.direction
    reach = anchor + towards_body * min(config.shortest_model_m, loco.length_m)
    return (min(anchor, reach), max(anchor, reach))


def yield_assumed_room(config: FusionConfig, state: FusionState, track_id: str) -> None:
    """Pull back an assumed end that reaches into a neighbour's certain body: the assumed
    model becomes the longest one that fits the free room (a guess yields to evidence)."""
    t = config.tuning
    locos = [x for x in state.locomotives if x.track_id == track_id]
    for loco in locos:
        unseen = [k for k in END_KINDS if loco.seen_at(k) is None]
        if not unseen:
            continue
        others = [certain_span(config, o) for o in locos if o is not loco]
        if not any(overlap(loco.span, o) > t.overlap_m for o in others):
            continue
        far_kind = unseen[0] if len(unseen) == 1 else "tail"
        anchor = loco.head_m if far_kind == "tail" else loco.tail_m
        towards_body = loco.direction if far_kind == "tail" else -loco.direction
        fitting = [
            (length, model)
            for model, length in config.model_lengths.items()
            if not any(
                overlap((min(anchor, far), max(anchor, far)), o) > t.overlap_m
                for o in others
                for far in (anchor + towards_body * length,)
            )
        ]
        if not fitting:
            continue  # no model fits: the tidy step keeps the better supported one
        length, model = max(fitting)
        far = anchor + towards_body * length
        if far_kind == "tail":
            loco.tail_m = far
        else:
            loco.head_m = far
        loco.assumed_model = model


def _eligible(
    config: FusionConfig, state: FusionState, track_id: str, at: datetime
) -> list[LooseEnd]:
    t = config.tuning
    return [
        e
        for e in state.loose_ends
        if e.track_id == track_id
        and e.hits >= t.birth_min_hits
        and seconds(at, e.last_seen) <= t.pairing_window_s
    ]


def _new_locomotive(
    state: FusionState,
    track_id: str,
    head_m: float,
    tail_m: float,
    at: datetime,
    existence: float,
    ends: list[LooseEnd],
    head_seen: datetime | None,
    tail_seen: datetime | None,
    assumed_model: str | None,
) -> TrackedLocomotive:
    cameras: list[str] = []
    for e in ends:
        cameras += [c for c in e.cameras if c not in cameras]
    loco = TrackedLocomotive(
        locomotive_id=f"loco-{state.next_id}",
        track_id=track_id,
        head_m=head_m,
        tail_m=tail_m,
        updated_at=at,
        first_seen=min(e.first_seen for e in ends),
        last_seen=max(e.last_seen for e in ends),
        head_seen_at=head_seen,
        tail_seen_at=tail_seen,
        existence=existence,
        assumed_model=assumed_model,
        cameras=cameras[-MAX_CAMERAS:],
    )
    state.next_id += 1
    state.locomotives.append(loco)
    used = {e.end_id for e in ends}
    state.loose_ends = [e for e in state.loose_ends if e.end_id not in used]
    return loco


def _plate_behind_cab(
    config: FusionConfig,
    state: FusionState,
    cab: LooseEnd,
    direction: float,
    heads: list[float],
) -> bool:
    """Whether a plate read at this cab hangs on the side away from the body: the cab's
    locomotive runs the other way, so this head does not pair in ``direction``. Each reading
    is compared with where the cab stood when it was read (a moving cab's older readings lie
    behind it)."""
    t = config.tuning
    now = cab.updated_at or cab.last_seen
    for vote in state.pending_votes:
        if vote.track_id != cab.track_id or not vote.plate:
            continue
        then = cab.position_m + travel(
            config, cab.velocity_mps, cab.velocity_at, now, vote.captured_at
        )
        offset = vote.position_m - then
        if abs(offset) > t.plate_inset_m + t.plate_margin_m:
            continue
        if min(heads, key=lambda h: abs(h - vote.position_m)) != cab.position_m:
            continue  # nearer another cab: that one's plate
        if offset * direction < -t.plate_inset_m / 2:
            return True
    return False


def inset(config: FusionConfig, end: LooseEnd) -> float:
    """How far inside the body an end's reported position lies: a cab known only by its
    plate is ``plate_inset_m`` in (where the plate hangs), a detected end the label offset."""
    t = config.tuning
    return t.plate_inset_m if end.from_plate_only else t.end_label_offset_m


def start_pairs(config: FusionConfig, state: FusionState, track_id: str, at: datetime) -> None:
    """Start locomotives from unexplained head/tail pairs that fit a model length.

    A cab known only by its plate readings pairs with a detected tail too (its plate hangs
    ``plate_inset_m`` inside the cab): a locomotive driving in with its cab end hidden is
    otherwise started twice from its lone ends, each body placed the wrong way (fresh pool
    gen-d413-s3: a TEP70 shown by its plate and its tail became two phantoms for 220 s).
    """
    t = config.tuning
    off = t.end_label_offset_m
    eligible = _eligible(config, state, track_id, at)
    ends = [e for e in eligible if not e.from_plate_only]
    cabs = [e for e in eligible if e.from_plate_only and e.kind == "head"]
    # Any detected end, however new, inside a body rules that body out: it is another end.
    detected = [e for e in state.loose_ends if e.track_id == track_id and not e.from_plate_only]
    heads = [e.position_m for e in ends if e.kind == "head"]
    options: list[tuple[float, LooseEnd, LooseEnd, float, float]] = []
    for head in [*(e for e in ends if e.kind == "head"), *cabs]:
        for tail in (e for e in ends if e.kind == "tail"):
            direction = 1.0 if tail.position_m >= head.position_m else -1.0
            head_true = head.position_m - direction * inset(config, head)
            tail_true = tail.position_m + direction * off
            length = abs(tail_true - head_true)
            misfit = config.length_misfit(length)
            if misfit > t.pairing_tolerance_m:
                continue
            if min(seconds(at, head.first_seen), seconds(at, tail.first_seen)) < t.birth_settle_s:
                continue  # let every camera report first: another pairing may fit better
            span = (min(head_true, tail_true), max(head_true, tail_true))
            if not _body_free(config, state, track_id, span, detected, (head.end_id, tail.end_id)):
                continue
            if not head.from_plate_only and _plate_behind_cab(
                config, state, head, direction, heads
            ):
                continue
            if _cab_names_another_length(config, state, track_id, head_true, tail_true):
                continue
            options.append((misfit, head, tail, head_true, tail_true))
    used: set[int] = set()
    for _, head, tail, head_true, tail_true in sorted(options, key=lambda o: o[0]):
        if head.end_id in used or tail.end_id in used:
            continue
        span = (min(head_true, tail_true), max(head_true, tail_true))
        if not _body_free(config, state, track_id, span, [], ()):
            continue
        used |= {head.end_id, tail.end_id}
        _new_locomotive(
            state,
            track_id,
            head_true,
            tail_true,
            at,
            t.existence_birth,
            [head, tail],
            None if head.from_plate_only else head.last_seen,
            tail.last_seen,
            None,
        )


def hypotheses(
    config: FusionConfig, state: FusionState, end: LooseEnd, at: datetime
) -> list[Hypothesis]:
    """The (direction, model) placements of a lone end's body that no view rules out."""
    t = config.tuning
    track = end.track_id
    off = inset(config, end)
    occluders = occluders_of(state, track)
    unexplained = [e for e in state.loose_ends if e.track_id == track and not e.from_plate_only]
    looked = [
        cam
        for cam, clock in state.cameras.items()
        if cam not in config.disabled_cameras and clock.captured_at >= end.first_seen
    ]
    if not end.from_plate_only and _may_be_assumed_end(config, state, end):
        return []  # the unseen end of a locomotive placed from one end: let it be revised
    heads = [e.position_m for e in unexplained if e.kind == "head"]
    if end.from_plate_only and _cab_beside(config, state, end, heads):
        return []  # a detected cab beside the plate: its start uses the reading
    # Readings at a detected head: that cab's plate. Where the cab drove, it left readings of
    # the same plate behind, which are not another cab inside its body.
    own = (
        frozenset(plates_near(state, track, end.position_m, t.plate_inset_m + t.plate_margin_m))
        if end.kind == "head" and not end.from_plate_only
        else frozenset()
    )
    out: list[Hypothesis] = []
    for direction in (-1.0, 1.0):
        if (
            end.kind == "head"
            and not end.from_plate_only
            and _plate_behind_cab(config, state, end, direction, heads)
        ):
            continue  # its plate hangs on the other side of the cab: the body runs that way
        true = end.position_m - direction * off
        for model, length in config.model_lengths.items():
            far = true + direction * length
            span = (min(true, far), max(true, far))
            if not _body_free(config, state, track, span, unexplained, (end.end_id,), own):
                continue
            if not config.passable(track, far):
                continue  # its body would reach past a buffer stop
            outside = not on_track(config, track, far)
            far_raw = far - direction * t.end_label_offset_m
            head_m, tail_m = (true, far) if end.kind == "head" else (far, true)
            if any(
                e.end_id != end.end_id
                and e.kind != end.kind
                and abs(e.position_m - far_raw) <= t.pairing_tolerance_m
                for e in unexplained
            ) and not _cab_names_another_length(config, state, track, head_m, tail_m):
                return []  # its partner may have been detected: let it pair instead
            if not outside and any(shows(config, cam, track, far_raw, occluders) for cam in looked):
                continue  # a camera has shown that spot since, and no end stood there
            out.append(Hypothesis(direction, model, length, true, far, outside))
    return out


def _cab_beside(
    config: FusionConfig, state: FusionState, plate: LooseEnd, heads: list[float]
) -> bool:
    """Whether a detected head stands within a plate's reach of ``plate`` (a cab evidenced by
    its readings alone) with no other such plate beside it: that cab is the plate's. Two
    plates around one detected head are two cabs coupled cab to cab, one of them hidden."""
    t = config.tuning
    reach = t.plate_inset_m + t.plate_margin_m
    plates = [
        e.position_m for e in state.loose_ends if e.track_id == plate.track_id and e.from_plate_only
    ]
    return any(
        abs(h - plate.position_m) <= reach and sum(abs(h - p) <= reach for p in plates) == 1
        for h in heads
    )


def _may_be_assumed_end(config: FusionConfig, state: FusionState, end: LooseEnd) -> bool:
    """Whether ``end`` fits, at a model length, as the never-seen end of a known locomotive
    whose other end was seen (``revise_assumed`` decides once the end has settled)."""
    t = config.tuning
    for loco in state.locomotives:
        if loco.track_id != end.track_id or loco.seen_at(end.kind) is not None:
            continue
        if loco.seen_at(other(end.kind)) is None:
            continue
        anchor = loco.end_m(other(end.kind))
        length = abs(end.position_m - anchor) + t.end_label_offset_m
        if config.length_misfit(length) > t.pairing_tolerance_m:
            continue
        body = 1.0 if end.position_m >= anchor else -1.0
        far = end.position_m + body * t.end_label_offset_m
        head_m, tail_m = (far, anchor) if end.kind == "head" else (anchor, far)
        if not _cab_names_another_length(config, state, end.track_id, head_m, tail_m):
            return True
    return False


def _cab_readings(
    config: FusionConfig, state: FusionState, track_id: str, plate_m: float
) -> dict[str, float]:
    """Summed confidence per model of the waiting plate readings at a cab whose plate hangs at
    ``plate_m``. A plate hangs ``plate_inset_m`` inside the cab end: a reading elsewhere on
    the body is a neighbour's plate (coupled locomotives stand within one body length of each
    other)."""
    t = config.tuning
    named: dict[str, float] = {}
    for v in state.pending_votes:
        if v.track_id != track_id or abs(v.position_m - plate_m) > t.plate_margin_m:
            continue
        if (model := vote_model(config, v)) is not None:
            named[model] = named.get(model, 0.0) + max(v.plate_confidence, v.model_confidence)
    return named


def _read_models(config: FusionConfig, state: FusionState, end: LooseEnd, hyp: Hypothesis) -> float:
    """Summed confidence of waiting plate readings at this hypothesis' cab naming its model."""
    t = config.tuning
    if end.kind == "head":
        plate_m = hyp.true_end_m + hyp.direction * t.plate_inset_m
    else:
        plate_m = hyp.far_end_m - hyp.direction * t.plate_inset_m
    return _cab_readings(config, state, end.track_id, plate_m).get(hyp.model, 0.0)


def _cab_names_another_length(
    config: FusionConfig, state: FusionState, track_id: str, head_m: float, tail_m: float
) -> bool:
    """Whether the readings at this pair's cab clearly name a model (the same dominance as a
    shown plate) whose length the pair misfits: the head and tail are two locomotives' ends (a
    cab and a neighbour's far end whose distance happens to fit another model)."""
    t = config.tuning
    direction = 1.0 if tail_m >= head_m else -1.0
    model = _named_model(config, state, track_id, head_m + direction * t.plate_inset_m)
    if model is None:
        return False  # none, or no clear majority (two cabs' plates read side by side)
    return abs(config.model_lengths[model] - abs(tail_m - head_m)) > t.pairing_tolerance_m


def choose(
    config: FusionConfig, state: FusionState, end: LooseEnd, options: list[Hypothesis], at: datetime
) -> Hypothesis | None:
    """The hypothesis to start, or None to wait for more evidence."""
    if not options:
        return None
    read = {h: _read_models(config, state, end, h) for h in options}
    if any(read.values()):
        # A reading at a hypothesised cab names the model; the direction it fits is the answer.
        best = max(read.values())
        options = [h for h in options if read[h] == best]
    elif end.from_plate_only:
        return None  # a plate with no model: nothing to place
    directions = {h.direction for h in options}
    if len(directions) > 1:
        outside = {h.direction for h in options if h.far_outside}
        moving = abs(speed_at(config, end.velocity_mps, end.velocity_at, at)) >= PASSING_MPS
        if len(outside) == 1 and moving:
            # Driving through a gate: its body is on the gate's side. No need to wait (an
            # arriving locomotive went uncounted for the whole wait: gen-d110-s3).
            direction = outside.pop()
        elif seconds(at, end.first_seen) < config.tuning.lone_end_wait_s:
            return None
        else:
            counts = {d: sum(h.direction == d for h in options) for d in directions}
            if counts[1.0] != counts[-1.0]:
                direction = max(counts, key=lambda d: counts[d])
            else:
                # Towards the middle of the track: more of the body stands inside the depot.
                middle = config.track_lengths.get(end.track_id, 0.0) / 2
                direction = 1.0 if end.position_m < middle else -1.0
        options = [h for h in options if h.direction == direction]
    ordered = sorted(options, key=lambda h: (h.length_m, h.model))
    return ordered[(len(ordered) - 1) // 2]


def start_lone_ends(config: FusionConfig, state: FusionState, track_id: str, at: datetime) -> None:
    """Start locomotives from unexplained ends whose partner no camera can show."""
    t = config.tuning
    for end in _eligible(config, state, track_id, at):
        if end not in state.loose_ends:
            continue  # used by an earlier start in this loop
        if end.hits < t.lone_end_min_hits:
            continue
        if end.from_plate_only and seconds(at, end.first_seen) < t.lone_end_wait_s:
            continue  # a cab whose ends are hidden: no hurry, let detected ends explain it
        if not end.from_plate_only and end.confidence < t.lone_end_confidence:
            continue
        hyp = choose(config, state, end, hypotheses(config, state, end, at), at)
        if hyp is None:
            continue
        head_end = end.kind == "head"
        head_m, tail_m = (
            (hyp.true_end_m, hyp.far_end_m) if head_end else (hyp.far_end_m, hyp.true_end_m)
        )
        seen = None if end.from_plate_only else end.last_seen
        _new_locomotive(
            state,
            track_id,
            head_m,
            tail_m,
            at,
            t.existence_birth,
            [end],
            seen if head_end else None,
            None if head_end else seen,
            hyp.model,
        )


def _named_model(
    config: FusionConfig, state: FusionState, track_id: str, plate_m: float
) -> str | None:
    """The model the waiting readings at a plate clearly name (None: none or no majority)."""
    named = _cab_readings(config, state, track_id, plate_m)
    model = dominant(named, 0.0, config.tuning.plate_dominance)
    return model if model in config.model_lengths else None


def _named_cabs(
    config: FusionConfig, state: FusionState, track_id: str, at: datetime, tail_m: float
) -> list[LooseEnd]:
    """Cabs evidenced by plate readings alone (their ends hidden) whose readings name a model
    that fits as the head of a locomotive whose tail stands at ``tail_m``: the readings are
    evidence of where the body runs (a plate read 17.2 m from a seen tail, naming a 17.2 m
    model, is that locomotive's cab)."""
    t = config.tuning
    out: list[LooseEnd] = []
    for e in _eligible(config, state, track_id, at):
        if not e.from_plate_only or seconds(at, e.first_seen) < t.birth_settle_s:
            continue
        model = _named_model(config, state, track_id, e.position_m)
        if model is None:
            continue
        body = 1.0 if e.position_m >= tail_m else -1.0
        length = abs(e.position_m + body * t.plate_inset_m - tail_m)
        if abs(config.model_lengths[model] - length) <= t.pairing_tolerance_m:
            out.append(e)
    return out


def revise_assumed(config: FusionConfig, state: FusionState, track_id: str, at: datetime) -> None:
    """Correct locomotives with an end never seen (placed from an assumed model, or from a
    plate alone) when new evidence contradicts the assumption.

    * An unexplained end of the other kind that fits a model length from the seen end is that
      locomotive's far end: the pair replaces the assumption. So is a cab known by its plate
      alone whose readings name a model fitting from a seen tail (its end stays unseen).
    * A detected end inside the assumed body means the body runs the other way: it is turned
      round about its seen end (the end inside belongs to a neighbour).
    """
    t = config.tuning
    for loco in [x for x in state.locomotives if x.track_id == track_id]:
        unseen = [k for k in END_KINDS if loco.seen_at(k) is None]
        if not unseen:
            continue
        # Placed from its plate alone, neither end seen: the plate places the cab, so the
        # tail is the assumption to check first.
        far_kind = unseen[0] if len(unseen) == 1 else "tail"
        seen_kind = "tail" if far_kind == "head" else "head"
        seen_true = loco.tail_m if seen_kind == "tail" else loco.head_m
        others = [x for x in state.locomotives if x is not loco and x.track_id == track_id]
        detected = [e for e in state.loose_ends if e.track_id == track_id and not e.from_plate_only]
        ends = [
            e
            for e in _eligible(config, state, track_id, at)
            if not e.from_plate_only
            and e.kind == far_kind
            and seconds(at, e.first_seen) >= t.birth_settle_s
        ]
        if far_kind == "head" and loco.seen_at("tail") is not None:
            ends += _named_cabs(config, state, track_id, at, seen_true)
        best: tuple[float, LooseEnd, float] | None = None
        for e in ends:
            body = 1.0 if e.position_m >= seen_true else -1.0
            far_true = e.position_m + body * inset(config, e)
            length = abs(far_true - seen_true)
            misfit = config.length_misfit(length)
            if misfit > t.pairing_tolerance_m:
                continue
            head_m, tail_m = (far_true, seen_true) if far_kind == "head" else (seen_true, far_true)
            if _cab_names_another_length(config, state, track_id, head_m, tail_m):
                continue
            span = (min(seen_true, far_true), max(seen_true, far_true))
            if any(overlap(o.span, span) > t.overlap_m for o in others):
                continue
            if _end_inside(config, span, detected, (e.end_id,)):
                continue  # another end stands inside: that body is two locomotives
            if best is None or misfit < best[0]:
                best = (misfit, e, far_true)
        if best is not None:
            _, e, far_true = best
            if e.from_plate_only:
                # A cab placed by its plate: its end is still unseen, its model is read.
                loco.head_m, loco.plate_read_at = far_true, e.last_seen
                loco.assumed_model = _named_model(config, state, track_id, e.position_m)
            elif far_kind == "head":
                loco.head_m, loco.head_seen_at = far_true, e.last_seen
                loco.assumed_model = None
            else:
                loco.tail_m, loco.tail_seen_at = far_true, e.last_seen
                loco.assumed_model = None
            state.loose_ends = [x for x in state.loose_ends if x.end_id != e.end_id]
            continue
        lo, hi = loco.span
        inside = [
            e
            for e in _eligible(config, state, track_id, at)
            if not e.from_plate_only
            and e.hits >= t.lone_end_min_hits
            and lo + t.merge_m < e.position_m < hi - t.merge_m
        ]
        if inside:
            far = loco.head_m if far_kind == "head" else loco.tail_m
            turned = seen_true - (far - seen_true)
            span = (min(seen_true, turned), max(seen_true, turned))
            if any(overlap(o.span, span) > t.overlap_m for o in others):
                continue
            if far_kind == "head":
                loco.head_m = turned
                loco.plate_read_at = None  # the cab it was read at is not where it stands
            else:
                loco.tail_m = turned
