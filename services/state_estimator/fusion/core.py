"""The fusion tracker: per-camera estimates in, one facility state out. No Faust, no Kafka.

Per track, in event time (``frame.captured_at``), for every frame of every camera:

1. **Predict** the track's locomotives to the frame's time (rigid bodies with a speed).
2. **Associate** the frame's detected ends with the ends the tracker expects (locomotive
   ends, then unexplained ends) by optimal assignment with gates (``association``).
3. **Update** matched locomotives (``tracking``); an end the camera shows (``visibility``:
   in the image, off its edges, not hidden by a nearer locomotive) but did not detect costs
   the locomotive existence, an end it cannot show costs nothing: standing for hours behind
   another locomotive is normal. Unmatched detections become unexplained ends.
4. **Start** locomotives from unexplained ends (``births``) and drop what cannot be: a
   locomotive out of the depot, one whose existence ran out, the weaker of two that overlap.

Plate readings are evidence per locomotive (``identity``). Every update is idempotent under
redelivery: a camera's frame is applied only if newer than the last one applied, a reading
only once per (camera, frame, position), so at-least-once delivery cannot double-count.
The public methods never change the state passed in; they return a new one.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from datetime import datetime, timedelta

from schemas.estimates import IdentityEstimate, PositionEstimate
from schemas.facility_state import FacilityState
from services.state_estimator.fusion import births, identity, tracking
from services.state_estimator.fusion.association import Detection, Target, assign, keep_order
from services.state_estimator.fusion.config import FusionConfig
from services.state_estimator.fusion.output import render
from services.state_estimator.fusion.state import (
    END_KINDS,
    CameraClock,
    Departed,
    EndKind,
    FusionState,
    LooseEnd,
    PlateVote,
    TrackedLocomotive,
)
from services.state_estimator.fusion.visibility import (
    Occluder,
    covers_track,
    note_seen_through,
    occluders_of,
    on_track,
    shown_anywhere,
    shows,
    shows_end,
)

LOOSE_END_BIAS_M = 0.1
"""Extra cost of explaining a detection by an unexplained end: a known locomotive's end at
the same distance is the better explanation."""

MAX_DEPARTED = 16
"""Departed locomotives remembered as possible occluders (the newest win)."""

IDENTITY_KEYS_KEPT = 64
"""Reading keys remembered per camera to recognise redeliveries (several frames' worth)."""


def _later(a: datetime | None, b: datetime) -> datetime:
    return b if a is None else max(a, b)


class FusionCore:
    """The pure tracker: ``apply_position`` / ``apply_identity`` return a new state;
    ``render`` turns a state into the published :class:`FacilityState`."""

    def __init__(self, config: FusionConfig) -> None:
        self.config = config

    # ---- inputs

    def apply(
        self, state: FusionState, estimate: PositionEstimate | IdentityEstimate
    ) -> tuple[FusionState, bool]:
        """Fold one estimate of either kind in; returns (new state, accepted)."""
        if isinstance(estimate, PositionEstimate):
            return self.apply_position(state, estimate)
        return self.apply_identity(state, estimate)

    def apply_position(
        self, state: FusionState, estimate: PositionEstimate
    ) -> tuple[FusionState, bool]:
        """Fold one frame's detected ends in; returns (new state, accepted).

        Not accepted (state unchanged): a frame not newer than the camera's last applied
        frame (a redelivery, or a late arrival).
        """
        cfg = self.config
        cam = estimate.camera_id
        frame = estimate.frame
        clock = state.cameras.get(cam)
        if clock is not None and (frame.captured_at, frame.seq) <= (clock.captured_at, clock.seq):
            return state, False
        new = state.copy_for_update()
        new.cameras[cam] = CameraClock(seq=frame.seq, captured_at=frame.captured_at)
        new.watermark = _later(new.watermark, frame.captured_at)
        detections: dict[str, list[Detection]] = defaultdict(list)
        for o in estimate.observations:
            if o.kind in END_KINDS and o.track_id in cfg.track_lengths and o.position_m is not None:
                kind: EndKind = "head" if o.kind == "head" else "tail"
                detections[o.track_id].append(Detection(kind, o.position_m, o.confidence))
        at = frame.captured_at
        for track_id in cfg.track_ids:
            if detections.get(track_id) or covers_track(cfg, cam, track_id):
                self._update_track(new, cam, track_id, detections.get(track_id, []), at)
        for track_id in cfg.track_ids:
            # Unexplained ends pair among themselves first: an assumed end gives way only to
            # an end nothing else explains.
            births.start_pairs(cfg, new, track_id, at)
            births.revise_assumed(cfg, new, track_id, at)
            births.start_lone_ends(cfg, new, track_id, at)
            births.yield_assumed_room(cfg, new, track_id)
        self._tidy(new, at)
        self._attach_votes(new)
        return new, True

    def apply_identity(
        self, state: FusionState, estimate: IdentityEstimate
    ) -> tuple[FusionState, bool]:
        """Fold one plate/model reading in as evidence; returns (new state, accepted)."""
        cam = estimate.camera_id
        frame = estimate.frame
        seen = state.identity_seen_at.get(cam)
        obs = estimate.observation
        if (
            obs is None
            or obs.track_id is None
            or obs.position_m is None
            or obs.track_id not in self.config.track_lengths
            or (estimate.plate_text is None and estimate.locomotive_model is None)
        ):
            if seen is not None and frame.captured_at <= seen:
                return state, False
            new = state.copy_for_update()
            new.identity_seen_at[cam] = frame.captured_at
            return new, True
        key = f"{frame.seq}:{obs.position_m:.1f}"
        if key in state.identity_keys.get(cam, []):
            return state, False
        new = state.copy_for_update()
        new.identity_keys[cam] = [*new.identity_keys.get(cam, []), key][-IDENTITY_KEYS_KEPT:]
        if seen is None or frame.captured_at > seen:
            new.identity_seen_at[cam] = frame.captured_at
        new.watermark = _later(new.watermark, frame.captured_at)
        vote = PlateVote(
            key=f"{cam}:{key}",
            captured_at=frame.captured_at,
            track_id=obs.track_id,
            position_m=obs.position_m,
            plate=estimate.plate_text,
            plate_confidence=estimate.plate_confidence,
            model=estimate.locomotive_model,
            model_confidence=estimate.model_confidence,
        )
        owner = identity.reading_owner(self.config, new.locomotives, vote)
        if owner is not None:
            identity.add_vote(owner, vote)
            if tracking.plate_at_cab(self.config, owner, vote.position_m, frame.captured_at) and (
                owner.plate_read_at is None or frame.captured_at > owner.plate_read_at
            ):
                owner.plate_read_at = frame.captured_at
            tracking.follow_plate(self.config, owner, vote.position_m, frame.captured_at)
            # A plate read on it is seen evidence that it stands there, ends hidden or not.
            owner.existence = min(1.0, owner.existence + self.config.tuning.existence_hit)
            owner.last_seen = max(owner.last_seen, frame.captured_at)
        else:
            new.pending_votes.append(vote)
            self._plate_as_cab(new, vote, cam)
            births.start_lone_ends(self.config, new, obs.track_id, frame.captured_at)
            self._attach_votes(new)
        return new, True

    # ---- one track, one frame

    def _update_track(
        self,
        state: FusionState,
        camera_id: str,
        track_id: str,
        detected: list[Detection],
        at: datetime,
    ) -> None:
        cfg = self.config
        t = cfg.tuning
        locos = [loco for loco in state.locomotives if loco.track_id == track_id]
        for loco in locos:
            tracking.predict(cfg, loco, at)
        loose = [e for e in state.loose_ends if e.track_id == track_id]
        for e in loose:
            tracking.predict_end(cfg, e, at)
        targets: list[Target] = []
        owners: list[tuple[TrackedLocomotive | LooseEnd, EndKind]] = []
        for loco in locos:
            for kind in END_KINDS:
                if not on_track(cfg, track_id, loco.end_m(kind), t.view_edge_m):
                    continue
                gate = tracking.gate(cfg, loco, kind, at)
                raw = tracking.raw_end(loco, kind, t.end_label_offset_m)
                extra, heading = tracking.ahead(cfg, loco, at)
                targets.append(Target(kind, raw, gate, ahead_m=extra, heading=heading))
                owners.append((loco, kind))
        for e in loose:
            if not e.from_plate_only:
                targets.append(Target(e.kind, e.position_m, t.merge_m, LOOSE_END_BIAS_M))
                owners.append((e, e.kind))
        matches = keep_order(
            assign(detected, targets, t.swap_cost_m), detected, self._contacts(locos, owners)
        )
        per_loco: dict[str, dict[EndKind, Detection]] = defaultdict(dict)
        matched: set[int] = set(matches.values())
        occluders = occluders_of(state, track_id)
        for i, j in matches.items():
            owner, kind = owners[j]
            det = detected[i]
            if isinstance(owner, TrackedLocomotive):
                per_loco[owner.locomotive_id][kind] = det
                note_seen_through(cfg, owner, camera_id, kind, det.position_m, occluders, at)
            else:
                self._support(owner, det.position_m, det.kind, det.confidence, at, camera_id)
        for loco in locos:
            if loco.locomotive_id in per_loco:
                tracking.update(cfg, loco, per_loco[loco.locomotive_id], at, camera_id)
        for j, (owner, kind) in enumerate(owners):
            if j in matched:
                continue
            if isinstance(owner, TrackedLocomotive):
                spot = tracking.raw_end(owner, kind, t.end_label_offset_m)
                if kind == "head" and tracking.plate_read_lately(cfg, owner, at):
                    continue  # its plate, read at the cab just now: the cab is there, hidden
                if shows_end(cfg, owner, camera_id, kind, spot, occluders):
                    if self._may_stand_unshown(owner, camera_id, kind, occluders):
                        continue
                    if tracking.stop_where_hidden(
                        cfg,
                        owner,
                        spot,
                        at,
                        lambda p: not shown_anywhere(cfg, track_id, p, occluders),
                    ):
                        continue  # it stopped short, out of every camera's view
                    tracking.missed(cfg, owner)
            elif shows(cfg, camera_id, track_id, owner.position_m, occluders):
                owner.misses += 1
        for i, det in enumerate(detected):
            if i not in matches:
                self._start_loose(
                    state, track_id, det.position_m, det.kind, det.confidence, at, camera_id, False
                )
            if i in matches and isinstance(owners[matches[i]][0], TrackedLocomotive):
                continue
            # An end no locomotive explains, well inside a locomotive's body: that body is
            # not (all) there any more, as surely as an end shown empty.
            for loco in locos:
                lo, hi = loco.span
                if lo + t.merge_m < det.position_m < hi - t.merge_m:
                    tracking.missed(cfg, loco)

    def _may_stand_unshown(
        self,
        loco: TrackedLocomotive,
        camera_id: str,
        kind: EndKind,
        occluders: list[Occluder],
    ) -> bool:
        """Whether an end never seen, placed at an assumed model's length from its seen other
        end, may stand at another model's length where this camera does not show it: then
        not detecting it at the assumed spot is no evidence (gen-d110-s3: a TE33A taken for a
        2TE116 lost its existence because its assumed head, 3.5 m short, was in view and its
        real head beyond the image edge)."""
        cfg = self.config
        if loco.seen_at(kind) is not None or loco.seen_at(tracking.other(kind)) is None:
            return False
        if identity.read_model(cfg, loco) is not None:
            return False  # its length is read, not assumed
        anchor = loco.end_m(tracking.other(kind))
        sign = 1.0 if loco.end_m(kind) >= anchor else -1.0
        off = cfg.tuning.end_label_offset_m
        return any(
            not shows_end(cfg, loco, camera_id, kind, anchor + sign * (length - off), occluders)
            for length in cfg.model_lengths.values()
        )

    @staticmethod
    def _contacts(
        locos: list[TrackedLocomotive], owners: list[tuple[TrackedLocomotive | LooseEnd, EndKind]]
    ) -> list[tuple[int, int]]:
        """(upper end of a body, lower end of the next body) as target indices."""
        index = {(id(o), k): j for j, (o, k) in enumerate(owners)}
        ordered = sorted(locos, key=lambda x: x.span[0])
        out: list[tuple[int, int]] = []
        for a, b in itertools.pairwise(ordered):
            high: EndKind = "head" if a.head_m >= a.tail_m else "tail"
            low: EndKind = "head" if b.head_m < b.tail_m else "tail"
            ja, jb = index.get((id(a), high)), index.get((id(b), low))
            if ja is not None and jb is not None:
                out.append((ja, jb))
        return out

    def _support(
        self,
        end: LooseEnd,
        position_m: float,
        kind: EndKind,
        weight: float,
        at: datetime,
        camera_id: str,
    ) -> None:
        """One more sighting of an unexplained end (a detection, or a plate for a cab)."""
        tracking.predict_end(self.config, end, at)
        residual = position_m - end.position_m
        end.position_m += self.config.tuning.position_gain * residual
        tracking.correct_speed(self.config, end, residual, at)
        if kind == "head":
            end.head_votes += weight
        else:
            end.tail_votes += weight
        end.hits += 1
        end.misses = 0
        end.confidence = max(end.confidence, weight)
        end.last_seen = max(end.last_seen, at)
        if camera_id not in end.cameras:
            end.cameras.append(camera_id)

    @staticmethod
    def _start_loose(
        state: FusionState,
        track_id: str,
        position_m: float,
        kind: EndKind,
        weight: float,
        at: datetime,
        camera_id: str,
        from_plate_only: bool,
    ) -> None:
        """A new unexplained end from its first sighting."""
        state.loose_ends.append(
            LooseEnd(
                end_id=state.next_end_id,
                track_id=track_id,
                position_m=position_m,
                head_votes=weight if kind == "head" else 0.0,
                tail_votes=weight if kind == "tail" else 0.0,
                hits=1,
                confidence=weight,
                first_seen=at,
                last_seen=at,
                cameras=[camera_id],
                from_plate_only=from_plate_only,
            )
        )
        state.next_end_id += 1

    def _plate_as_cab(self, state: FusionState, vote: PlateVote, camera_id: str) -> None:
        """A plate read where no locomotive stands: evidence of a cab there."""
        merge = self.config.tuning.merge_m
        near = [
            e
            for e in state.loose_ends
            if e.track_id == vote.track_id
            and e.from_plate_only
            and abs(e.position_m - vote.position_m) <= merge
        ]
        at, weight = vote.captured_at, vote.plate_confidence
        if near:
            end = min(near, key=lambda e: abs(e.position_m - vote.position_m))
            self._support(end, vote.position_m, "head", weight, at, camera_id)
        else:
            self._start_loose(
                state, vote.track_id, vote.position_m, "head", weight, at, camera_id, True
            )

    # ---- consistency

    def _tidy(self, state: FusionState, at: datetime) -> None:
        """Drop what cannot be: locomotives out of the depot or out of existence, the weaker
        of two overlapping ones, unexplained ends shown empty or too old."""
        cfg = self.config
        t = cfg.tuning
        kept: list[TrackedLocomotive] = []
        for loco in state.locomotives:
            lo, hi = loco.span
            length = cfg.track_lengths.get(loco.track_id, float("inf"))
            if loco.existence < t.existence_drop:
                continue
            if hi < 0.0 or lo > length or tracking.drove_out(cfg, loco, at):
                gone = self._departure(loco, at)
                if gone is not None:
                    state.departed.append(gone)
                continue
            kept.append(loco)

        def support(loco: TrackedLocomotive) -> tuple[int, float, float]:
            # Both ends seen, then existence, then the older locomotive wins.
            both = int(loco.head_seen_at is not None and loco.tail_seen_at is not None)
            return (both, loco.existence, -loco.first_seen.timestamp())

        kept = self._without_stale_copies(kept)
        kept.sort(key=support, reverse=True)
        survivors: list[TrackedLocomotive] = []
        for loco in kept:
            if self._fits(loco, survivors):
                survivors.append(loco)
        order = {id(loco): i for i, loco in enumerate(state.locomotives)}
        state.locomotives = sorted(survivors, key=lambda loco: order[id(loco)])
        state.departed = self._still_outside(state.departed, survivors, at)
        state.loose_ends = [
            e
            for e in self._merged(state.loose_ends)
            if e.misses < t.loose_end_misses
            and not (e.from_plate_only and self._on_a_body(state, e))
            and (at - e.last_seen).total_seconds() <= t.pairing_window_s
        ]

    def _departure(self, loco: TrackedLocomotive, at: datetime) -> Departed | None:
        """Where a locomotive that left through a gate may stand outside: from where it is
        now to where its fading speed would take it, the part beyond the gate (it may have
        stopped anywhere in between, unseen; standing there it hides ends on farther tracks
        from cameras inside: gen-d107-s4, a ChME3 standing 3 m out of the gate of T2 hid a
        standing locomotive's tail on T4, and that locomotive was dropped)."""
        cfg = self.config
        if cfg.tuning.departed_keep_s <= 0:
            return None
        length = cfg.track_lengths.get(loco.track_id)
        if length is None:
            return None
        lo, hi = loco.span
        ref = max(loco.updated_at, loco.velocity_at or loco.updated_at)
        rest = tracking.travel(
            cfg,
            loco.velocity_mps,
            loco.velocity_at,
            loco.updated_at,
            ref + timedelta(seconds=cfg.tuning.velocity_memory_s),
        )
        low, high = min(lo, lo + rest), max(hi, hi + rest)
        if lo + hi < length:  # out through the start
            high = min(high, 0.0)
        else:
            low = max(low, length)
        if high <= low:
            return None
        return Departed(track_id=loco.track_id, low_m=low, high_m=high, left_at=at)

    def _still_outside(
        self, departed: list[Departed], locos: list[TrackedLocomotive], at: datetime
    ) -> list[Departed]:
        """Departed locomotives that may still stand outside: not for longer than
        ``departed_keep_s``, and not where a tracked locomotive stands now (it drove on, or
        that is it, back again)."""
        t = self.config.tuning
        return [
            gone
            for gone in departed
            if (at - gone.left_at).total_seconds() <= t.departed_keep_s
            and not any(
                loco.track_id == gone.track_id
                and births.overlap(loco.span, (gone.low_m, gone.high_m)) > t.overlap_m
                for loco in locos
            )
        ][-MAX_DEPARTED:]

    def _fits(self, loco: TrackedLocomotive, survivors: list[TrackedLocomotive]) -> bool:
        """Whether ``loco`` can stand beside the stronger ``survivors`` of its track.

        Two rigid bodies cannot overlap. An overlap up to ``overlap_m`` is measurement noise;
        one up to ``contact_m`` is a coupled pair whose touching ends were measured into each
        other (two ends 0.6 m apart, one detection pulled onto the other's end): ``loco`` is
        pushed back to touch instead of being dropped, if it fits there (on the track, clear
        of the others). A larger overlap is two hypotheses of one body: ``loco`` goes.
        """
        t = self.config.tuning
        same = [s for s in survivors if s.track_id == loco.track_id]
        worst = max(same, key=lambda s: births.overlap(s.span, loco.span), default=None)
        depth = 0.0 if worst is None else births.overlap(worst.span, loco.span)
        if worst is None or depth <= t.overlap_m:
            return True
        if depth > t.contact_m:
            return False
        lo, hi = loco.span
        wlo, whi = worst.span
        shift = (wlo - hi) if (lo + hi) < (wlo + whi) else (whi - lo)
        moved = (lo + shift, hi + shift)
        if not (
            self.config.passable(loco.track_id, moved[0])
            and self.config.passable(loco.track_id, moved[1])
        ) or any(births.overlap(s.span, moved) > t.overlap_m for s in same):
            return False
        loco.head_m += shift
        loco.tail_m += shift
        # Coupled, they move together: a speed that drove it into its neighbour is wrong.
        loco.velocity_mps, loco.velocity_at = worst.velocity_mps, worst.velocity_at
        return True

    def _without_stale_copies(self, locos: list[TrackedLocomotive]) -> list[TrackedLocomotive]:
        """A plate names one locomotive: where two show the same plate, the one last seen
        before the other was first seen (give or take ``rigid_after_s``: never both at once)
        and not seen for ``duplicate_plate_s`` after the other was is where that locomotive
        stood before it moved on unseen (a body hidden from every camera keeps no evidence
        against it), and is dropped. Two seen at the same time are both kept (a misread)."""
        t = self.config.tuning
        # Without plate evidence nothing is shown: identity_of (every estimate) is skipped.
        shown = [
            (loco, identity.identity_of(self.config, loco).plate if loco.plates else None)
            for loco in locos
        ]
        newest: dict[str, TrackedLocomotive] = {}
        for loco, plate in shown:
            if plate is not None and (
                plate not in newest or loco.last_seen > newest[plate].last_seen
            ):
                newest[plate] = loco

        def stale(loco: TrackedLocomotive, plate: str | None) -> bool:
            winner = newest.get(plate) if plate is not None else None
            if winner is None or winner is loco:
                return False
            apart = (winner.first_seen - loco.last_seen).total_seconds() > -t.rigid_after_s
            return (
                apart and (winner.last_seen - loco.last_seen).total_seconds() > t.duplicate_plate_s
            )

        return [loco for loco, plate in shown if not stale(loco, plate)]

    def _merged(self, ends: list[LooseEnd]) -> list[LooseEnd]:
        """One end, not a trail: a detected end last seen before another of its kind closer
        than ``merge_m`` first appeared is a stale copy of it (a moving end leaves one behind
        when a frame's detection starts a new end instead), and folds into it. Ends seen at
        the same time are never merged: two cabs coupled face to face stand 0.6 m apart."""
        merge = self.config.tuning.merge_m
        kept: list[LooseEnd] = []
        for e in sorted(ends, key=lambda e: (e.last_seen, e.hits), reverse=True):
            twin = next(
                (
                    k
                    for k in kept
                    if not e.from_plate_only
                    and not k.from_plate_only
                    and k.track_id == e.track_id
                    and k.kind == e.kind
                    and e.last_seen < k.first_seen
                    and abs(k.position_m - e.position_m) < merge
                ),
                None,
            )
            if twin is None:
                kept.append(e)
                continue
            twin.hits += e.hits
            twin.head_votes += e.head_votes
            twin.tail_votes += e.tail_votes
            twin.first_seen = min(twin.first_seen, e.first_seen)
            twin.confidence = max(twin.confidence, e.confidence)
            twin.cameras = [*twin.cameras, *(c for c in e.cameras if c not in twin.cameras)]
        order = {id(e): i for i, e in enumerate(ends)}
        return sorted(kept, key=lambda e: order[id(e)])

    def _on_a_body(self, state: FusionState, end: LooseEnd) -> bool:
        """Whether a plate-only end now lies on a locomotive (its readings are votes)."""
        owner = identity.owner_at(self.config, state.locomotives, end.track_id, end.position_m)
        if owner is None:
            return False
        merge = self.config.tuning.merge_m
        return not any(
            v.track_id == end.track_id
            and abs(v.position_m - end.position_m) <= merge
            and identity.foreign_plate(self.config, owner, v.plate, v.position_m)
            for v in state.pending_votes
        )

    def _attach_votes(self, state: FusionState) -> None:
        """Move waiting plate readings onto the locomotive now standing where they were read."""
        if not state.pending_votes:
            return
        t = self.config.tuning
        waiting: list[PlateVote] = []
        for vote in state.pending_votes:
            owner = identity.reading_owner(self.config, state.locomotives, vote)
            if owner is not None:
                identity.add_vote(owner, vote)
                continue
            if state.watermark is None or (
                (state.watermark - vote.captured_at).total_seconds() <= t.pending_vote_s
            ):
                waiting.append(vote)
        state.pending_votes = waiting

    # ---- output

    def render(self, state: FusionState, as_of: datetime | None = None) -> FacilityState:
        """The facility state at event time ``as_of`` (default: the newest event seen)."""
        return render(self.config, state, as_of)
