"""Which spots of a track a camera shows, so that "not detected" can mean "not there".

A camera shows a spot when the spot lies inside its image, not within ``view_edge_m`` of an
image edge (an end cut by the edge is often missed; the track's own ends are not image
edges), and not behind a locomotive standing on a track nearer to the camera in that image
column. The sightlines come from the calibration alone (real cameras have no pose), so the
occlusion test errs towards "hidden": a hidden end that is not detected is no evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from services.state_estimator.coverage import hidden_behind, hiders, in_view
from services.state_estimator.fusion.config import FusionConfig
from services.state_estimator.fusion.state import (
    EndKind,
    FusionState,
    SeenThrough,
    TrackedLocomotive,
)

Occluder = tuple[str, float, float]
"""(track_id, low_m, high_m) of a locomotive that may hide what stands behind it."""


def occluders_of(state: FusionState, track_id: str) -> list[Occluder]:
    """What may hide ends on ``track_id``: the locomotives on other tracks, and where those
    that left through a gate may stand outside it."""
    return [
        *((loco.track_id, *loco.span) for loco in state.locomotives if loco.track_id != track_id),
        *(
            (gone.track_id, gone.low_m, gone.high_m)
            for gone in state.departed
            if gone.track_id != track_id
        ),
    ]


def covers_track(config: FusionConfig, camera_id: str, track_id: str) -> bool:
    """Whether any stretch of the track lies in the camera's image."""
    return bool(config.coverage.get(camera_id, {}).get(track_id))


def in_image(config: FusionConfig, camera_id: str, track_id: str, position_m: float) -> bool:
    """Whether ``position_m`` lies well inside the camera's image (edges excluded)."""
    return in_view(
        config.coverage.get(camera_id, {}).get(track_id, []),
        position_m,
        config.tuning.view_edge_m,
        config.track_lengths.get(track_id, float("inf")),
    )


def shows(
    config: FusionConfig,
    camera_id: str,
    track_id: str,
    position_m: float,
    occluders: Sequence[Occluder] = (),
) -> bool:
    """Whether the camera would detect an end standing at ``position_m`` (in its image, not
    near an edge, not behind a locomotive on a nearer track)."""
    if not in_image(config, camera_id, track_id, position_m):
        return False
    if not occluders:
        return True
    return not hidden_behind(
        config.sightlines.get(camera_id, {}),
        track_id,
        position_m,
        list(occluders),
        config.tuning.occluder_margin_m,
    )


SEEN_THROUGH_KEPT = 4
"""Seen-through records kept per locomotive (the newest win)."""


def shown_anywhere(
    config: FusionConfig, track_id: str, position_m: float, occluders: Sequence[Occluder]
) -> bool:
    """Whether some enabled camera would detect an end standing at ``position_m``."""
    return any(
        shows(config, camera_id, track_id, position_m, occluders)
        for camera_id in config.camera_ids
        if camera_id not in config.disabled_cameras
    )


def hiding(
    config: FusionConfig,
    camera_id: str,
    track_id: str,
    position_m: float,
    occluders: Sequence[Occluder],
) -> list[Occluder]:
    """The locomotives on nearer tracks that hide ``position_m`` from the camera (empty: in
    plain sight, or not in its image at all)."""
    if not occluders:
        return []
    return list(
        hiders(
            config.sightlines.get(camera_id, {}),
            track_id,
            position_m,
            list(occluders),
            config.tuning.occluder_margin_m,
        )
    )


def _same_occluder(a: Occluder, b: Occluder, tolerance_m: float) -> bool:
    return a[0] == b[0] and abs(a[1] - b[1]) <= tolerance_m and abs(a[2] - b[2]) <= tolerance_m


def note_seen_through(
    config: FusionConfig,
    loco: TrackedLocomotive,
    camera_id: str,
    kind: EndKind,
    position_m: float,
    occluders: Sequence[Occluder],
    at: datetime,
) -> None:
    """Remember that the camera detected ``loco``'s end at ``position_m`` past locomotives
    the sightline model says hide it (no-op when the model says it is in plain sight)."""
    hidden_by = hiding(config, camera_id, loco.track_id, position_m, occluders)
    if not hidden_by:
        return
    same = [r for r in loco.seen_through if (r.camera_id, r.kind) == (camera_id, kind)]
    kept = [r for r in loco.seen_through if (r.camera_id, r.kind) != (camera_id, kind)]
    hits = 1
    if same and _matches(config, same[0], position_m, hidden_by):
        hits = same[0].hits + 1
    record = SeenThrough(
        camera_id=camera_id, kind=kind, position_m=position_m, occluders=hidden_by, at=at, hits=hits
    )
    loco.seen_through = [*kept, record][-SEEN_THROUGH_KEPT:]


SEEN_THROUGH_MIN_HITS = 2
"""Detections past the same occluders before a camera counts as showing that spot."""


def _matches(
    config: FusionConfig, record: SeenThrough, position_m: float, hidden_by: Sequence[Occluder]
) -> bool:
    """Whether ``record`` was made at this spot past these same occluders (within
    ``occluder_margin_m``, the slack the sightline model itself allows)."""
    tolerance = config.tuning.occluder_margin_m
    return abs(record.position_m - position_m) <= tolerance and all(
        any(_same_occluder(h, o, tolerance) for o in record.occluders) for h in hidden_by
    )


def shows_end(
    config: FusionConfig,
    loco: TrackedLocomotive,
    camera_id: str,
    kind: EndKind,
    position_m: float,
    occluders: Sequence[Occluder],
) -> bool:
    """Whether the camera would detect ``loco``'s end at ``position_m``: :func:`shows`, except
    that an end this camera has detected there before (``SEEN_THROUGH_MIN_HITS`` times), past
    the same locomotives, is shown (the sightline model hides too much; detections proved
    it)."""
    if not in_image(config, camera_id, loco.track_id, position_m):
        return False
    hidden_by = hiding(config, camera_id, loco.track_id, position_m, occluders)
    if not hidden_by:
        return True
    return any(
        r.camera_id == camera_id
        and r.kind == kind
        and r.hits >= SEEN_THROUGH_MIN_HITS
        and _matches(config, r, position_m, hidden_by)
        for r in loco.seen_through
    )


def on_track(config: FusionConfig, track_id: str, position_m: float, slack_m: float = 0.0) -> bool:
    """Whether ``position_m`` lies on the track (inside the depot), ``slack_m`` either side."""
    length = config.track_lengths.get(track_id)
    return length is None or -slack_m <= position_m <= length + slack_m
