"""The fusion core: per-camera estimates in, one facility state out. No Faust, no Kafka.

How it works (all in event time, ``frame.captured_at``):

* Each camera's **latest view** (the head/tail ends its newest frame placed on tracks) is kept.
  A frame older than the camera's current view is late and ignored; the same frame delivered
  twice is a no-op, so at-least-once delivery cannot double-count.
* Per track, the ends of all views are pooled. An end from a view that another camera, covering
  the same spot, has since superseded by more than ``sync_window_s`` is dropped (the newer
  camera is the authority there); what only a silent camera saw is kept, marked stale.
* Ends of the same kind seen by different cameras within ``merge_m`` are one end; cameras
  that show more ends found the clusters, so two tails 0.7 m apart in one view stay two.
* Along the track, neighbouring head/tail ends pair into a locomotive when their distance
  (corrected for the detector's inward label offset) matches a model length within
  ``pairing_tolerance_m`` and they were seen within ``pairing_window_s`` of each other, or
  already formed that locomotive before (a locomotive standing still for hours).
* An end left alone keeps a known locomotive alive (its other end follows rigidly); a
  locomotive no camera supports is held for ``hold_s`` and then dropped. A head and a tail of
  two different known locomotives never pair (their ends in between were missed).
* A new lone end whose partner can only lie beyond the end of the track (every on-track
  place for it is in a current view and empty) is a locomotive partly outside the depot;
  its outside end follows from the model a plate reading names, else the shortest that fits.
* Locomotives keep stable ids across updates (nearest previous one on the track); plate and
  model readings are votes attached to a locomotive, keyed by camera + frame so redelivery
  does not count twice.

State is a plain pydantic model (:class:`FusionState`), so the Faust adapter stores it as JSON
in a changelog-backed table and a restart resumes exactly where the worker stopped.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import Field

from schemas.base import StrictModel, UtcDatetime
from schemas.estimates import IdentityEstimate, PositionEstimate
from schemas.facility import FacilityConfig, StateEstimatorSettings
from schemas.facility_state import CameraHealth, FacilityState, LocomotiveState, TrackState
from services.state_estimator.coverage import (
    Interval,
    TrackInImage,
    covers,
    facility_coverage,
    facility_sightlines,
    hidden_behind,
)

EndKind = Literal["head", "tail"]
END_KINDS: tuple[EndKind, ...] = ("head", "tail")


# --------------------------------------------------------------------------- state model


class EndSighting(StrictModel):
    """A head or tail end one camera placed on a track (raw detector position)."""

    track_id: str
    kind: EndKind
    position_m: float
    confidence: float = Field(ge=0.0, le=1.0)


class CameraView(StrictModel):
    """What a camera's newest frame showed."""

    camera_id: str
    seq: int
    captured_at: UtcDatetime
    ends: tuple[EndSighting, ...] = ()


class PlateVote(StrictModel):
    """One plate/model reading, keyed by camera, frame and plate position (dedupe key)."""

    key: str
    captured_at: UtcDatetime
    track_id: str
    position_m: float
    plate: str | None = None
    plate_confidence: float = 0.0
    model: str | None = None
    model_confidence: float = 0.0


class TrackedLocomotive(StrictModel):
    """A locomotive the estimator follows; ``confidence`` is before staleness is applied."""

    locomotive_id: str
    track_id: str
    head_m: float
    tail_m: float
    confidence: float = Field(ge=0.0, le=1.0)
    cameras: tuple[str, ...] = ()
    first_seen: UtcDatetime
    last_seen: UtcDatetime
    oldest_evidence: UtcDatetime
    inferred_end: bool = False
    votes: tuple[PlateVote, ...] = ()

    @property
    def length_m(self) -> float:
        """Head-to-tail length."""
        return abs(self.tail_m - self.head_m)

    @property
    def direction(self) -> float:
        """+1 when the tail lies at larger position_m than the head, else -1."""
        return 1.0 if self.tail_m >= self.head_m else -1.0

    @property
    def span(self) -> tuple[float, float]:
        """(low, high) positions along the track."""
        return (min(self.head_m, self.tail_m), max(self.head_m, self.tail_m))


class FusionState(StrictModel):
    """Everything the fusion core remembers; serialisable as JSON (Faust table value)."""

    views: dict[str, CameraView] = Field(default_factory=dict)
    identity_seen_at: dict[str, UtcDatetime] = Field(default_factory=dict)
    pending_votes: tuple[PlateVote, ...] = ()
    locomotives: tuple[TrackedLocomotive, ...] = ()
    next_id: int = 1
    watermark: UtcDatetime | None = None


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class FusionConfig:
    """Facility facts and tuning the core needs; build it with :meth:`from_facility`."""

    facility_id: str
    flow: str
    track_ids: tuple[str, ...]
    model_lengths: dict[str, float]
    plate_patterns: dict[str, str]
    coverage: dict[str, dict[str, list[Interval]]]
    sightlines: dict[str, dict[str, TrackInImage]] = field(default_factory=dict)
    """Where each track lies in each camera's image (for occlusion by nearer locomotives)."""
    disabled_cameras: frozenset[str] = frozenset()
    stale_after_s: float = 30.0
    pairing_tolerance_m: float = 3.0
    pairing_window_s: float = 10.0
    end_label_offset_m: float = 0.3
    hold_s: float = 5.0
    merge_m: float = 1.5
    sync_window_s: float = 10.0
    match_m: float = 3.0
    coverage_margin_m: float = 1.0
    view_edge_m: float = 0.5
    lone_end_confidence: float = 0.5
    """A new locomotive seen by one end only needs a detection at least this confident."""
    read_model_tolerance_m: float = 1.5
    occluder_inset_m: float = 1.0
    """A locomotive on a nearer track hides what stands behind it except near its ends (the
    sightlines come from the floor calibration alone, without heights)."""
    """Two ends pair only if their distance fits, this closely, the model a plate names."""
    """A new locomotive seen by one end only needs a detection at least this confident."""
    """An end this close to an image edge is cut off and often missed: such a spot does not
    count as seen empty (see ``_in_view``)."""
    plate_margin_m: float = 1.5
    pending_vote_s: float = 15.0
    max_votes: int = 24
    camera_ids: tuple[str, ...] = field(default=())
    track_lengths: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_facility(
        cls, cfg: FacilityConfig, flow: str, settings: StateEstimatorSettings | None = None
    ) -> FusionConfig:
        """Derive the core's config from the facility config and the flow's settings."""
        s = settings or StateEstimatorSettings()
        return cls(
            facility_id=cfg.facility_id,
            flow=flow,
            track_ids=tuple(t.id for t in cfg.tracks),
            model_lengths={m.name: m.length_m for m in cfg.locomotive_models},
            plate_patterns={m.name: m.plate_pattern for m in cfg.locomotive_models},
            coverage=facility_coverage(cfg),
            sightlines=facility_sightlines(cfg),
            disabled_cameras=frozenset(c.id for c in cfg.cameras if not c.enabled),
            stale_after_s=s.stale_after_s,
            pairing_tolerance_m=s.pairing_tolerance_m,
            pairing_window_s=s.pairing_window_s,
            end_label_offset_m=s.end_label_offset_m,
            hold_s=s.hold_s,
            camera_ids=tuple(c.id for c in cfg.cameras),
            track_lengths={t.id: t.length_m for t in cfg.tracks},
        )


# --------------------------------------------------------------------------- helpers


@dataclass
class _End:
    """Ends of one kind on one track merged across cameras."""

    kind: EndKind
    position_m: float
    confidence: float
    cameras: set[str]
    seen_at: datetime
    oldest: datetime


def _seconds(a: datetime, b: datetime) -> float:
    return (a - b).total_seconds()


def _round(x: float) -> float:
    # Centimetres: finer digits are noise and would make every frame look like a change.
    return round(x, 2)


# --------------------------------------------------------------------------- the core


class FusionCore:
    """Pure fusion: ``apply_position`` / ``apply_identity`` return a new state; ``render``
    turns a state into the published :class:`FacilityState`."""

    def __init__(self, config: FusionConfig) -> None:
        self.config = config
        self._plate_res = {name: re.compile(p) for name, p in config.plate_patterns.items()}

    # ---- inputs

    def apply_position(
        self, state: FusionState, estimate: PositionEstimate
    ) -> tuple[FusionState, bool]:
        """Fold one position estimate in; returns (new state, accepted).

        Not accepted (state unchanged): a frame not newer than the camera's current view
        (duplicate delivery or late arrival).
        """
        cam = estimate.camera_id
        frame = estimate.frame
        current = state.views.get(cam)
        if current is not None and (frame.captured_at, frame.seq) <= (
            current.captured_at,
            current.seq,
        ):
            return state, False
        ends = tuple(
            EndSighting(
                track_id=o.track_id,
                kind=o.kind,
                position_m=o.position_m,
                confidence=o.confidence,
            )
            for o in estimate.observations
            if o.kind in ("head", "tail")
            and o.track_id is not None
            and o.position_m is not None
            and o.track_id in self.config.track_ids
        )
        view = CameraView(camera_id=cam, seq=frame.seq, captured_at=frame.captured_at, ends=ends)
        views = {**state.views, cam: view}
        watermark = _later(state.watermark, frame.captured_at)
        state = state.model_copy(update={"views": views, "watermark": watermark})
        return self._refuse(state), True

    def apply_identity(
        self, state: FusionState, estimate: IdentityEstimate
    ) -> tuple[FusionState, bool]:
        """Fold one plate/model reading in as a vote; returns (new state, accepted)."""
        frame = estimate.frame
        seen = state.identity_seen_at.get(estimate.camera_id)
        identity_seen = dict(state.identity_seen_at)
        if seen is None or frame.captured_at > seen:
            identity_seen[estimate.camera_id] = frame.captured_at
        obs = estimate.observation
        usable = (
            obs is not None
            and obs.track_id is not None
            and obs.position_m is not None
            and (estimate.plate_text is not None or estimate.locomotive_model is not None)
        )
        if not usable:
            changed = identity_seen != state.identity_seen_at
            return state.model_copy(update={"identity_seen_at": identity_seen}), changed
        assert obs is not None
        assert obs.track_id is not None
        assert obs.position_m is not None
        vote = PlateVote(
            key=f"{estimate.camera_id}:{frame.seq}:{obs.position_m:.1f}",
            captured_at=frame.captured_at,
            track_id=obs.track_id,
            position_m=obs.position_m,
            plate=estimate.plate_text,
            plate_confidence=estimate.plate_confidence,
            model=estimate.locomotive_model,
            model_confidence=estimate.model_confidence,
        )
        known = {v.key for v in state.pending_votes} | {
            v.key for loco in state.locomotives for v in loco.votes
        }
        if vote.key in known:
            return state, False
        watermark = _later(state.watermark, frame.captured_at)
        state = state.model_copy(
            update={
                "identity_seen_at": identity_seen,
                "pending_votes": (*state.pending_votes, vote),
                "watermark": watermark,
            }
        )
        return self._attach_votes(state), True

    # ---- fusion

    def _refuse(self, state: FusionState) -> FusionState:
        """Recompute the locomotives from the views (the heart of the estimator)."""
        assert state.watermark is not None
        now = state.watermark
        prev_by_track: dict[str, list[TrackedLocomotive]] = defaultdict(list)
        for loco in state.locomotives:
            prev_by_track[loco.track_id].append(loco)
        next_id = state.next_id
        out: list[TrackedLocomotive] = []
        for track_id in self.config.track_ids:
            ends = self._merged_ends(state, track_id)
            locos, next_id = self._track_locomotives(
                track_id, ends, prev_by_track.get(track_id, []), now, next_id, state
            )
            out += locos
        state = state.model_copy(update={"locomotives": tuple(out), "next_id": next_id})
        return self._attach_votes(state)

    def _merged_ends(self, state: FusionState, track_id: str) -> list[_End]:
        cfg = self.config
        views = list(state.views.values())
        kept: list[tuple[CameraView, EndSighting]] = []
        for view in views:
            for end in view.ends:
                if end.track_id != track_id:
                    continue
                superseded = any(
                    other.camera_id != view.camera_id
                    and _seconds(other.captured_at, view.captured_at) > cfg.sync_window_s
                    and covers(
                        cfg.coverage.get(other.camera_id, {}).get(track_id, []),
                        end.position_m,
                        cfg.coverage_margin_m,
                    )
                    for other in views
                )
                if not superseded:
                    kept.append((view, end))
        # Cameras that see the most ends here go first and found the clusters: a camera that
        # shows two tails 0.7 m apart (coupled tail to tail) proves there are two.
        per_camera: dict[str, list[tuple[CameraView, EndSighting]]] = defaultdict(list)
        for view, end in kept:
            per_camera[view.camera_id].append((view, end))
        order = sorted(per_camera, key=lambda c: (-len(per_camera[c]), c))
        merged: list[_End] = []
        for camera in order:
            sightings = per_camera[camera]
            # Each end joins the nearest compatible cluster, closest pairs first.
            options = sorted(
                (abs(m.position_m - end.position_m), i, j)
                for i, (_, end) in enumerate(sightings)
                for j, m in enumerate(merged)
                if m.kind == end.kind
                and abs(m.position_m - end.position_m) <= cfg.merge_m
                and camera not in m.cameras
            )
            placed: dict[int, int] = {}
            taken: set[int] = set()
            for _, i, j in options:
                if i not in placed and j not in taken:
                    placed[i], taken = j, taken | {j}
            for i, (view, end) in enumerate(sightings):
                if i not in placed:
                    merged.append(
                        _End(
                            end.kind,
                            end.position_m,
                            end.confidence,
                            {camera},
                            view.captured_at,
                            view.captured_at,
                        )
                    )
                    continue
                target = merged[placed[i]]
                w_old = target.confidence * len(target.cameras)
                w_new = end.confidence
                total = w_old + w_new
                if total > 0:
                    target.position_m = (target.position_m * w_old + end.position_m * w_new) / total
                target.confidence = max(target.confidence, end.confidence)
                target.cameras.add(camera)
                target.seen_at = max(target.seen_at, view.captured_at)
                target.oldest = min(target.oldest, view.captured_at)
        merged.sort(key=lambda e: (e.position_m, e.kind))
        return merged

    def _length_fit(self, distance_m: float) -> float | None:
        """Best |model length - corrected head-tail distance|, or None when none fits."""
        corrected = distance_m + 2 * self.config.end_label_offset_m
        best = min(abs(length - corrected) for length in self.config.model_lengths.values())
        return best if best <= self.config.pairing_tolerance_m else None

    def _explained(
        self,
        end: _End,
        prev: list[TrackedLocomotive],
        result: list[TrackedLocomotive],
        ends: list[_End],
    ) -> bool:
        """Whether a known locomotive accounts for ``end``: it is that locomotive's end of
        this kind, and no other end seen now is."""
        owner = self._owner(end, prev)
        if owner is None:
            return False
        kept = next((r for r in result if r.locomotive_id == owner.locomotive_id), None)
        if kept is None:
            return True
        raw = self._raw_end(kept, end.kind)
        return not any(
            e is not end and e.kind == end.kind and abs(e.position_m - raw) <= self.config.merge_m
            for e in ends
        )

    def _owner(self, e: _End, prev: list[TrackedLocomotive]) -> TrackedLocomotive | None:
        """The known locomotive whose end of this kind lies nearest ``e`` (within match_m)."""
        match_m = self.config.match_m
        near = [p for p in prev if abs(self._raw_end(p, e.kind) - e.position_m) <= match_m]
        return min(near, key=lambda p: abs(self._raw_end(p, e.kind) - e.position_m), default=None)

    def _raw_end(self, loco: TrackedLocomotive, kind: EndKind) -> float:
        """Where the detector would place this locomotive's end (inside the true end)."""
        off = self.config.end_label_offset_m
        if kind == "head":
            return loco.head_m + loco.direction * off
        return loco.tail_m - loco.direction * off

    def _pair_score(
        self,
        a: _End,
        b: _End,
        prev: list[TrackedLocomotive],
        readings: Sequence[tuple[float, str, float]] = (),
        heads: Sequence[float] = (),
    ) -> float | None:
        if a.kind == b.kind:
            return None
        misfit = self._length_fit(abs(b.position_m - a.position_m))
        if misfit is None:
            return None
        head, other = (a, b) if a.kind == "head" else (b, a)
        if self._contradicts_reading(head.position_m, other.position_m, readings, heads):
            # Its plate names a model this pair's length does not fit: the two ends belong to
            # two locomotives (e.g. each running out of the depot at its own end).
            return None
        apart = abs(_seconds(a.seen_at, b.seen_at))
        owner_a, owner_b = self._owner(a, prev), self._owner(b, prev)
        formed = owner_a is not None and owner_a is owner_b
        if apart > self.config.pairing_window_s and not formed:
            return None
        if owner_a is not None and owner_b is not None and not formed:
            # A tail of one known locomotive and the cab of the next one, whose ends in
            # between were missed in a frame: not a new, longer locomotive.
            return None
        return 2.0 - misfit / self.config.pairing_tolerance_m

    def _read_model(
        self,
        head_m: float,
        other_m: float,
        readings: Sequence[tuple[float, str, float]],
        heads: Sequence[float],
    ) -> str | None:
        """The model the plate readings name for a locomotive with its cab end at ``head_m``
        and its other end at ``other_m`` (detector positions), or None.

        A reading counts when it lies on or beside the span and no other head end seen on the
        track is closer to it (plates are read near the cab of their own locomotive, not the
        neighbour's it is coupled to).
        """
        lo, hi = sorted((head_m, other_m))
        # A plate hangs above the floor: placed through the floor homography it lands up to a
        # couple of metres off its cab, on either side.
        margin = 2 * self.config.plate_margin_m
        weights: dict[str, float] = defaultdict(float)
        for position, model, weight in readings:
            if not lo - margin <= position <= hi + margin:
                continue
            nearest = min(heads, key=lambda h: abs(h - position), default=head_m)
            if abs(nearest - position) < abs(head_m - position):
                continue
            weights[model] += weight
        return max(sorted(weights), key=lambda m: weights[m]) if weights else None

    def _contradicts_reading(
        self,
        head_m: float,
        other_m: float,
        readings: Sequence[tuple[float, str, float]],
        heads: Sequence[float],
    ) -> bool:
        """Whether the plate read near this cab names a model whose length does not fit."""
        model = self._read_model(head_m, other_m, readings, heads)
        if model is None:
            return False
        length = abs(other_m - head_m) + 2 * self.config.end_label_offset_m
        return abs(self.config.model_lengths[model] - length) > self.config.read_model_tolerance_m

    def _readings(
        self, track_id: str, prev: list[TrackedLocomotive], state: FusionState | None
    ) -> list[tuple[float, str, float]]:
        """(position, model, weight) of the plate/model readings on a track."""
        votes = [v for loco in prev for v in loco.votes]
        if state is not None:
            votes += [v for v in state.pending_votes if v.track_id == track_id]
        out = []
        for v in votes:
            model = self._vote_model(v)
            if model in self.config.model_lengths:
                out.append((v.position_m, model, max(v.model_confidence, v.plate_confidence)))
        return out

    def _voted_model(self, loco: TrackedLocomotive) -> str | None:
        """The model plate/model readings give this locomotive (not guessed from length)."""
        model = self.identity_of(loco, from_length=False)[0]
        return model if model in self.config.model_lengths else None

    def _track_locomotives(
        self,
        track_id: str,
        ends: list[_End],
        prev: list[TrackedLocomotive],
        now: datetime,
        next_id: int,
        state: FusionState | None = None,
    ) -> tuple[list[TrackedLocomotive], int]:
        cfg = self.config
        # Best set of non-overlapping neighbour pairs (locomotives cannot overlap, so a
        # locomotive's two ends are always neighbours along the track).
        n = len(ends)
        readings = self._readings(track_id, prev, state)
        heads = [e.position_m for e in ends if e.kind == "head"]
        best = [0.0] * (n + 1)
        choice: list[int] = [0] * (n + 1)
        for i in range(1, n + 1):
            best[i], choice[i] = best[i - 1], 1
            if i >= 2:
                score = self._pair_score(ends[i - 2], ends[i - 1], prev, readings, heads)
                if score is not None and best[i - 2] + score > best[i]:
                    best[i], choice[i] = best[i - 2] + score, 2
        pairs: list[tuple[_End, _End]] = []
        lone: list[_End] = []
        i = n
        while i > 0:
            if choice[i] == 2:
                pairs.append((ends[i - 2], ends[i - 1]))
                i -= 2
            else:
                lone.append(ends[i - 1])
                i -= 1
        pairs.reverse()
        lone.reverse()

        off = cfg.end_label_offset_m
        fresh: list[TrackedLocomotive] = []
        for a, b in pairs:
            head, tail = (a, b) if a.kind == "head" else (b, a)
            direction = 1.0 if tail.position_m >= head.position_m else -1.0
            misfit = self._length_fit(abs(tail.position_m - head.position_m)) or 0.0
            fit = 1.0 - 0.5 * misfit / cfg.pairing_tolerance_m
            fresh.append(
                TrackedLocomotive(
                    locomotive_id="",
                    track_id=track_id,
                    head_m=head.position_m - direction * off,
                    tail_m=tail.position_m + direction * off,
                    confidence=min(1.0, (head.confidence + tail.confidence) / 2 * fit),
                    cameras=tuple(sorted(head.cameras | tail.cameras)),
                    first_seen=min(head.seen_at, tail.seen_at),
                    last_seen=max(head.seen_at, tail.seen_at),
                    oldest_evidence=min(head.oldest, tail.oldest),
                )
            )

        # Stable ids: each new locomotive takes the nearest unclaimed previous one.
        claimed: dict[int, TrackedLocomotive] = {}
        candidates = sorted(
            (abs(_centre(f) - _centre(p)), fi, pi)
            for fi, f in enumerate(fresh)
            for pi, p in enumerate(prev)
            if abs(_centre(f) - _centre(p)) <= max(cfg.match_m, 0.5 * p.length_m)
        )
        used_prev: set[int] = set()
        for _, fi, pi in candidates:
            if fi in claimed or pi in used_prev:
                continue
            claimed[fi] = prev[pi]
            used_prev.add(pi)
        result: list[TrackedLocomotive] = []
        for fi, f in enumerate(fresh):
            old = claimed.get(fi)
            if old is not None:
                result.append(
                    f.model_copy(
                        update={
                            "locomotive_id": old.locomotive_id,
                            "votes": old.votes,
                            "first_seen": old.first_seen,
                        }
                    )
                )
            else:
                result.append(f.model_copy(update={"locomotive_id": f"L{next_id}"}))
                next_id += 1

        # A lone end keeps a known locomotive alive; the other end follows rigidly.
        remaining = [p for pi, p in enumerate(prev) if pi not in used_prev]
        unmatched: list[_End] = []
        refuted: list[_End] = []  # ends of a known locomotive that a plate reading refutes
        refuted_ids: set[str] = set()
        for end in lone:
            match = min(
                (
                    p
                    for p in remaining
                    if abs(self._raw_end(p, end.kind) - end.position_m) <= cfg.match_m
                ),
                key=lambda p: abs(self._raw_end(p, end.kind) - end.position_m),
                default=None,
            )
            if match is None:
                unmatched.append(end)
                continue
            shift = end.position_m - self._raw_end(match, end.kind)
            head_m, tail_m = match.head_m + shift, match.tail_m + shift
            model = self._voted_model(match) or self._read_model(
                self._raw_end(match, "head") + shift,
                self._raw_end(match, "tail") + shift,
                readings,
                heads,
            )
            unseen = tail_m if end.kind == "head" else head_m
            other_kind: EndKind = "tail" if end.kind == "head" else "head"
            unseen_raw = self._raw_end(match, other_kind) + shift
            other_seen = any(
                e.kind == other_kind and abs(e.position_m - unseen_raw) <= cfg.match_m for e in ends
            )
            misfit = model is not None and (
                abs(cfg.model_lengths[model] - match.length_m) > cfg.read_model_tolerance_m
            )
            # The unseen end is outside the depot or where no camera shows it: its place
            # follows from the model's length once a reading says which model this is.
            movable = (
                model is not None
                and not (misfit and other_seen)
                and (
                    not self._on_track(track_id, unseen)
                    or self._blind_spot(track_id, unseen, state)
                )
            )
            if misfit and not movable:
                # A plate names a model that does not fit between this end and the other end,
                # which a camera shows where it was: ends of two locomotives, wrongly paired.
                refuted.append(end)
                refuted_ids.add(match.locomotive_id)
                continue
            if movable:
                assert model is not None
                length = cfg.model_lengths[model]
                if end.kind == "head":
                    tail_m = head_m + match.direction * length
                else:
                    head_m = tail_m - match.direction * length
            remaining.remove(match)
            result.append(
                match.model_copy(
                    update={
                        "head_m": head_m,
                        "tail_m": tail_m,
                        "confidence": min(match.confidence, end.confidence) * 0.6,
                        "cameras": tuple(sorted(end.cameras)),
                        "last_seen": max(match.last_seen, end.seen_at),
                        "oldest_evidence": end.oldest,
                        "inferred_end": True,
                    }
                )
            )
        remaining = [p for p in remaining if p.locomotive_id not in refuted_ids]

        # A new lone end whose partner can only stand where no camera shows it: a locomotive
        # partly outside the depot (arriving or leaving through the gate), or one whose other
        # end stands in a blind spot between two views.
        for end in [*unmatched, *refuted]:
            if end not in refuted and self._explained(end, prev, result, ends):
                continue  # an end of a known locomotive, not the first sight of a new one
            if end.confidence < cfg.lone_end_confidence:
                continue  # one unsure detection does not make a locomotive
            placed = self._other_end_unseen(track_id, end, ends, state or FusionState())
            if placed is None:
                continue
            head_m, tail_m = placed
            result.append(
                TrackedLocomotive(
                    locomotive_id=f"L{next_id}",
                    track_id=track_id,
                    head_m=head_m,
                    tail_m=tail_m,
                    confidence=end.confidence * 0.6,
                    cameras=tuple(sorted(end.cameras)),
                    first_seen=end.seen_at,
                    last_seen=end.seen_at,
                    oldest_evidence=end.oldest,
                    inferred_end=True,
                )
            )
            next_id += 1

        # Unsupported locomotives are held briefly (one missed detection must not flicker an
        # id away), unless something else now stands where they stood.
        for p in remaining:
            lo, hi = p.span
            if any(_overlap((lo, hi), r.span) > 0.5 for r in result):
                continue
            if _seconds(now, p.last_seen) > cfg.hold_s:
                if state is None or not self._out_of_sight(p, now, state):
                    continue
                # Where its ends stand, no current view can show them (hidden behind
                # locomotives on nearer tracks, or where views meet): it has not been seen
                # to leave, so it is kept, with the confidence of a guess.
                p = p.model_copy(update={"confidence": min(p.confidence, 0.5)})
            result.append(p)
        result.sort(key=lambda loco: loco.span[0])
        return result, next_id

    def _in_view(
        self,
        camera_id: str,
        track_id: str,
        position_m: float,
        occluders: list[tuple[str, float, float]] | None = None,
    ) -> bool:
        """Whether ``camera_id`` shows ``position_m`` well inside its image, not hidden.

        An end within ``view_edge_m`` of an image edge is cut off there and often not
        detected, so such a spot does not count as seen; the track's own ends are not image
        edges. An end behind a locomotive on a nearer track (``occluders``) is not seen either.
        """
        cfg = self.config
        margin = cfg.view_edge_m
        length = cfg.track_lengths.get(track_id)
        inside = any(
            lo + (0.0 if lo <= 0.0 else margin)
            <= position_m
            <= hi - (0.0 if length is not None and hi >= length else margin)
            for lo, hi in cfg.coverage.get(camera_id, {}).get(track_id, [])
        )
        if not inside:
            return False
        return not (
            occluders
            and hidden_behind(
                cfg.sightlines.get(camera_id, {}),
                track_id,
                position_m,
                occluders,
                -cfg.occluder_inset_m,
            )
        )

    @staticmethod
    def _occluders(state: FusionState) -> list[tuple[str, float, float]]:
        """(track, low, high) of every locomotive the state holds: what may hide ends."""
        return [(loco.track_id, *loco.span) for loco in state.locomotives]

    def _shown(
        self,
        track_id: str,
        position_m: float,
        since: datetime,
        state: FusionState,
        occlusion: bool = False,
    ) -> bool:
        """Whether a view captured at or after ``since`` shows ``position_m`` (and so would
        show an end standing there); with ``occlusion``, not where the state's locomotives on
        nearer tracks may hide it."""
        occluders = self._occluders(state) if occlusion else None
        return any(
            v.captured_at >= since and self._in_view(v.camera_id, track_id, position_m, occluders)
            for v in state.views.values()
        )

    def _looked_at(self, track_id: str, position_m: float, end: _End, state: FusionState) -> bool:
        """Whether a view as recent as ``end``'s shows ``position_m``, not hidden."""
        since = end.seen_at - timedelta(seconds=self.config.sync_window_s)
        return self._shown(track_id, position_m, since, state, occlusion=True)

    def _blind_spot(
        self, track_id: str, position_m: float, state: FusionState | None = None
    ) -> bool:
        """Whether no enabled camera shows ``position_m`` well: views meet or miss there, or
        locomotives of ``state`` on nearer tracks hide it from every camera that could."""
        cfg = self.config
        occluders = self._occluders(state) if state is not None else None
        return not any(
            self._in_view(cam, track_id, position_m, occluders)
            for cam in cfg.camera_ids or tuple(cfg.coverage)
            if cam not in cfg.disabled_cameras
        )

    def _out_of_sight(self, loco: TrackedLocomotive, now: datetime, state: FusionState) -> bool:
        """Whether no current view shows either end of ``loco`` that stands on its track."""
        since = now - timedelta(seconds=self.config.sync_window_s)
        spots = [
            self._raw_end(loco, kind)
            for kind in END_KINDS
            if self._on_track(loco.track_id, loco.head_m if kind == "head" else loco.tail_m)
        ]
        return bool(spots) and not any(
            self._shown(loco.track_id, spot, since, state, occlusion=True) for spot in spots
        )

    def _on_track(self, track_id: str, *positions: float) -> bool:
        length = self.config.track_lengths.get(track_id)
        return length is None or all(0.0 <= p <= length for p in positions)

    def _other_end_unseen(
        self, track_id: str, end: _End, ends: list[_End], state: FusionState
    ) -> tuple[float, float] | None:
        """(head_m, tail_m) of a locomotive whose only visible end is ``end`` and whose other
        end stands where no camera can show it, or None when that is not the only explanation.

        Each (direction, model) is a hypothesis for where the other end stands. One whose
        other end would be in a current view is ruled out (it would have been seen); one
        whose other end would be in a view that has not reported yet makes the case ambiguous
        (wait); one whose other end lies beyond the track end (outside the depot) or in a
        blind spot (where neighbouring views meet) stands when no other end lies in between.
        All standing hypotheses must agree on the direction.
        """
        cfg = self.config
        track_length = cfg.track_lengths.get(track_id)
        if track_length is None:
            return None
        if any(
            e is not end
            and e.kind == end.kind
            and abs(e.position_m - end.position_m) <= 2 * cfg.merge_m
            and not e.cameras & end.cameras
            for e in ends
        ):
            # Most likely the same end placed apart by two cameras, not a second locomotive.
            return None
        off = cfg.end_label_offset_m
        standing: list[tuple[float, float, str]] = []
        for direction in (-1.0, 1.0):  # where the body lies, seen from this end
            true_end = end.position_m - direction * off
            for model, length in cfg.model_lengths.items():
                far = true_end + direction * length
                if 0.0 <= far <= track_length:
                    spot = far - direction * off
                    if self._looked_at(track_id, spot, end, state):
                        continue  # a current view shows that spot empty: not this model
                    if not self._blind_spot(track_id, spot, state):
                        return None  # a camera would show it but has not reported yet: wait
                    # No camera shows that spot well (views meet there): the other end may
                    # stand there unseen.
                lo, hi = sorted((true_end, min(max(far, 0.0), track_length)))
                if not any(lo < e.position_m < hi for e in ends if e is not end):
                    standing.append((direction, length, model))
        if not standing:
            return None
        # A plate/model reading waiting on the body of a hypothesis says which model it is,
        # and so which way the body runs when the views leave both ways open.
        votes: dict[tuple[float, str], float] = defaultdict(float)
        readings = self._readings(track_id, [], state)
        for direction, length, model in standing:
            true_end = end.position_m - direction * off
            lo, hi = sorted((true_end, true_end + direction * length))
            for position, read, weight in readings:
                if read == model and lo - 1.5 <= position <= hi + 1.5:
                    votes[(direction, model)] += weight
        ways = Counter(d for d, _, _ in standing).most_common()
        if votes:
            direction, model = max(votes, key=lambda k: votes[k])
            length = cfg.model_lengths[model]
        elif len(ways) == 1 or ways[0][1] > ways[1][1]:
            # The way more models fit is the likelier one; without a reading, the shortest
            # model that fits that way is the least committal guess.
            direction = ways[0][0]
            length = min(length for d, length, _ in standing if d == direction)
        else:
            return None  # the body may run either way: wait for a plate or for movement
        true_end = end.position_m - direction * off
        far = true_end + direction * length
        return (true_end, far) if end.kind == "head" else (far, true_end)

    def _attach_votes(self, state: FusionState) -> FusionState:
        """Move pending plate votes onto the locomotive standing where the plate was read."""
        if not state.pending_votes:
            return state
        cfg = self.config
        locos = list(state.locomotives)
        pending: list[PlateVote] = []
        for vote in state.pending_votes:
            candidates = [
                (abs(_centre(loco) - vote.position_m), i)
                for i, loco in enumerate(locos)
                if loco.track_id == vote.track_id
                and loco.span[0] - cfg.plate_margin_m
                <= vote.position_m
                <= loco.span[1] + cfg.plate_margin_m
            ]
            if not candidates:
                if state.watermark is None or (
                    _seconds(state.watermark, vote.captured_at) <= cfg.pending_vote_s
                ):
                    pending.append(vote)
                continue
            _, i = min(candidates)
            loco = locos[i]
            if any(v.key == vote.key for v in loco.votes):
                continue
            # Newest readings win the bounded history; a redelivered old reading falls off.
            votes = sorted((*loco.votes, vote), key=lambda v: (v.captured_at, v.key))
            locos[i] = loco.model_copy(update={"votes": tuple(votes[-cfg.max_votes :])})
        return state.model_copy(
            update={"locomotives": tuple(locos), "pending_votes": tuple(pending)}
        )

    # ---- output

    def _vote_model(self, vote: PlateVote) -> str | None:
        """The model a reading names: its model, else the model whose pattern its plate fits."""
        if vote.model:
            return vote.model
        if vote.plate:
            for name, pattern in self._plate_res.items():
                if pattern.fullmatch(vote.plate):
                    return name
        return None

    def identity_of(
        self, loco: TrackedLocomotive, from_length: bool = True
    ) -> tuple[str | None, str | None]:
        """(model, plate) decided from the votes, the plate pattern and (``from_length``)
        the length."""
        plates: dict[str, float] = defaultdict(float)
        models: dict[str, float] = defaultdict(float)
        for v in loco.votes:
            if v.plate:
                plates[v.plate] += v.plate_confidence
            if v.model:
                models[v.model] += v.model_confidence
        plate = max(sorted(plates), key=lambda p: plates[p]) if plates else None
        if models:
            return max(sorted(models), key=lambda m: models[m]), plate
        if plate is not None:
            for name, pattern in self._plate_res.items():
                if pattern.fullmatch(plate):
                    return name, plate
        if not from_length:
            return None, plate
        fits = [
            name
            for name, length in self.config.model_lengths.items()
            if abs(length - loco.length_m) <= 0.5
        ]
        return (fits[0] if len(fits) == 1 else None), plate

    def render(self, state: FusionState, as_of: datetime | None = None) -> FacilityState:
        """The facility state at event time ``as_of`` (default: the newest event seen)."""
        cfg = self.config
        now = as_of or state.watermark
        if now is None:
            now = datetime.fromtimestamp(0, UTC)
        stale_after = timedelta(seconds=cfg.stale_after_s)
        tracks: dict[str, list[LocomotiveState]] = {t: [] for t in cfg.track_ids}
        for loco in state.locomotives:
            if loco.track_id not in tracks:
                continue
            stale = now - loco.last_seen > stale_after
            confidence = loco.confidence
            if stale:
                confidence *= 0.5
            elif now - loco.oldest_evidence > stale_after:
                confidence *= 0.75  # one end rests on a silent camera's last view
            model, plate = self.identity_of(loco)
            tracks[loco.track_id].append(
                LocomotiveState(
                    locomotive_id=loco.locomotive_id,
                    head_m=_round(loco.head_m),
                    tail_m=_round(loco.tail_m),
                    model=model,
                    plate=plate,
                    confidence=round(confidence, 3),
                    cameras=list(loco.cameras),
                    last_seen=loco.last_seen,
                    stale=stale,
                )
            )
        cameras = []
        for cam in sorted(cfg.camera_ids):
            view = state.views.get(cam)
            seen = view.captured_at if view else None
            ident = state.identity_seen_at.get(cam)
            if ident is not None and (seen is None or ident > seen):
                seen = ident
            if cam in cfg.disabled_cameras:
                status: Literal["ok", "stale", "disabled"] = "disabled"
            elif seen is not None and now - seen <= stale_after:
                status = "ok"
            else:
                status = "stale"
            cameras.append(CameraHealth(camera_id=cam, status=status, last_frame_at=seen))
        return FacilityState(
            facility_id=cfg.facility_id,
            flow=cfg.flow,
            as_of=now,
            tracks=[TrackState(track_id=t, locomotives=locos) for t, locos in tracks.items()],
            cameras=cameras,
        )


def _later(a: datetime | None, b: datetime) -> datetime:
    return b if a is None else max(a, b)


def _centre(loco: TrackedLocomotive) -> float:
    return (loco.head_m + loco.tail_m) / 2


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def content_signature(state: FacilityState) -> str:
    """The state without its timestamps: equal signatures mean nothing a dashboard shows changed.

    ``as_of``, ``last_seen`` and ``last_frame_at`` move with every frame; publishing on them
    would turn "on every change" into "on every frame".
    """
    return state.model_dump_json(
        exclude={
            "as_of": True,
            "tracks": {"__all__": {"locomotives": {"__all__": {"last_seen"}}}},
            "cameras": {"__all__": {"last_frame_at"}},
        }
    )


def published_changes(
    core: FusionCore,
    estimates: Iterable[PositionEstimate | IdentityEstimate],
    state: FusionState | None = None,
) -> Iterator[FacilityState]:
    """The facility states the estimator publishes "on change" for ``estimates`` in order.

    The Faust app applies exactly this rule, so for a single-partition input the app's
    change messages equal these byte for byte (heartbeats aside).
    """
    current = state or FusionState()
    signature: str | None = None
    for est in estimates:
        if isinstance(est, PositionEstimate):
            current, accepted = core.apply_position(current, est)
        else:
            current, accepted = core.apply_identity(current, est)
        if not accepted:
            continue
        rendered = core.render(current)
        sig = content_signature(rendered)
        if sig != signature:
            signature = sig
            yield rendered
