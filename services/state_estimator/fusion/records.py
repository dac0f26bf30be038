"""The fusion state as small keyed records, for a Faust table whose changelog stays small.

Writing the whole :class:`FusionState` as one value on every estimate made the changelog
grow by the full state per estimate (tens of KB, 30 times a second at 8 cameras): the
producer buffer filled, the fuse agent stalled, and a restart had to read all of it back.
Instead the state is split into records that change independently:

- ``meta``: id counters and the event-time watermark;
- ``cameras``: per camera, the newest frame applied and the latest plate-reading keys (what
  makes a redelivered estimate recognisable, hence ignored); one record, as every camera
  moves on every second;
- ``track/<id>``: the locomotives, unexplained ends, waiting plate readings and departed
  locomotives (still in view outside a gate) of one track.

:func:`diff` gives only the records that changed since the last checkpoint (``None``: the
record is gone), so a checkpoint writes a few hundred bytes per changed track, not the state.

Records written in one checkpoint can, after a crash in the middle of it, be restored from
different checkpoints. :func:`join` keeps such a mix consistent: the id counters never fall
behind an id in use. An estimate whose camera record is older than a track record is applied
again to that track; matching makes that idempotent for positions, and plate votes are
summed evidence (a repeated vote does not change which plate wins).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

from pydantic import Field

from schemas.base import UtcDatetime
from services.state_estimator.fusion.state import (
    CameraClock,
    Departed,
    FusionState,
    LooseEnd,
    PlateVote,
    Record,
    TrackedLocomotive,
)

META = "meta"
CAMERAS = "cameras"
TRACK_PREFIX = "track/"


class MetaRecord(Record):
    """Facility-wide counters and watermark."""

    next_id: int = 1
    next_end_id: int = 1
    watermark: UtcDatetime | None = None


class CameraRecord(Record):
    """What the tracker has applied from one camera."""

    clock: CameraClock | None = None
    identity_seen_at: datetime | None = None
    identity_keys: list[str] = Field(default_factory=list)


class CamerasRecord(Record):
    """What the tracker has applied from every camera."""

    cameras: dict[str, CameraRecord] = Field(default_factory=dict)


class TrackRecord(Record):
    """Everything the tracker follows on one track."""

    locomotives: list[TrackedLocomotive] = Field(default_factory=list)
    loose_ends: list[LooseEnd] = Field(default_factory=list)
    pending_votes: list[PlateVote] = Field(default_factory=list)
    departed: list[Departed] = Field(default_factory=list)


def split(state: FusionState) -> dict[str, bytes]:
    """The state as ``{record key: JSON bytes}``; :func:`join` inverts it."""
    out: dict[str, bytes] = {
        META: MetaRecord(
            next_id=state.next_id, next_end_id=state.next_end_id, watermark=state.watermark
        )
        .model_dump_json()
        .encode()
    }
    camera_ids = set(state.cameras) | set(state.identity_seen_at) | set(state.identity_keys)
    if camera_ids:
        cameras = CamerasRecord(
            cameras={
                cam: CameraRecord(
                    clock=state.cameras.get(cam),
                    identity_seen_at=state.identity_seen_at.get(cam),
                    identity_keys=list(state.identity_keys.get(cam, [])),
                )
                for cam in sorted(camera_ids)
            }
        )
        out[CAMERAS] = cameras.model_dump_json().encode()
    tracks: dict[str, TrackRecord] = {}
    for loco in state.locomotives:
        tracks.setdefault(loco.track_id, TrackRecord()).locomotives.append(loco)
    for end in state.loose_ends:
        tracks.setdefault(end.track_id, TrackRecord()).loose_ends.append(end)
    for vote in state.pending_votes:
        tracks.setdefault(vote.track_id, TrackRecord()).pending_votes.append(vote)
    for gone in state.departed:
        tracks.setdefault(gone.track_id, TrackRecord()).departed.append(gone)
    for track_id in sorted(tracks):
        out[TRACK_PREFIX + track_id] = tracks[track_id].model_dump_json().encode()
    return out


def join(records: Mapping[str, bytes]) -> FusionState:
    """Rebuild the state from its records (any subset; missing ones are empty)."""
    state = FusionState()
    meta = records.get(META)
    if meta is not None:
        m = MetaRecord.model_validate_json(meta)
        state.next_id, state.next_end_id, state.watermark = m.next_id, m.next_end_id, m.watermark
    for key in sorted(records):
        value = records[key]
        if key == CAMERAS:
            for cam, c in CamerasRecord.model_validate_json(value).cameras.items():
                if c.clock is not None:
                    state.cameras[cam] = c.clock
                if c.identity_seen_at is not None:
                    state.identity_seen_at[cam] = c.identity_seen_at
                if c.identity_keys:
                    state.identity_keys[cam] = c.identity_keys
        elif key.startswith(TRACK_PREFIX):
            t = TrackRecord.model_validate_json(value)
            state.locomotives.extend(t.locomotives)
            state.loose_ends.extend(t.loose_ends)
            state.pending_votes.extend(t.pending_votes)
            state.departed.extend(t.departed)
    # Records restored from different checkpoints: ids must stay unique.
    used = [_id_number(lo.locomotive_id) + 1 for lo in state.locomotives]
    state.next_id = max([state.next_id, *used])
    state.next_end_id = max([state.next_end_id, *(e.end_id + 1 for e in state.loose_ends)])
    for clock in state.cameras.values():
        if state.watermark is None or clock.captured_at > state.watermark:
            state.watermark = clock.captured_at
    return state


def diff(before: Mapping[str, bytes], after: Mapping[str, bytes]) -> dict[str, bytes | None]:
    """Records to write so that ``before`` becomes ``after`` (``None``: delete the key)."""
    changes: dict[str, bytes | None] = {k: v for k, v in after.items() if before.get(k) != v}
    changes.update({k: None for k in before if k not in after})
    return changes


def _id_number(locomotive_id: str) -> int:
    """The counter behind an id such as ``loco-12`` (0 when it has none)."""
    match = re.search(r"(\d+)$", locomotive_id)
    return int(match.group(1)) if match else 0
