"""Which spots of a track a camera shows, so that "not detected" can mean "not there".

A camera shows a spot when the spot lies inside its image, not within ``view_edge_m`` of an
image edge (an end cut by the edge is often missed; the track's own ends are not image
edges), and not behind a locomotive standing on a track nearer to the camera in that image
column. The sightlines come from the calibration alone (real cameras have no pose), so the
occlusion test errs towards "hidden": a hidden end that is not detected is no evidence.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from services.state_estimator.coverage import hidden_behind, in_view
from services.state_estimator.fusion.config import FusionConfig
from services.state_estimator.fusion.state import TrackedLocomotive

Occluder = tuple[str, float, float]
"""(track_id, low_m, high_m) of a locomotive that may hide what stands behind it."""


def occluders_of(locomotives: Iterable[TrackedLocomotive]) -> list[Occluder]:
    """The spans of ``locomotives``: what may hide ends on farther tracks."""
    return [(loco.track_id, *loco.span) for loco in locomotives]


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


def on_track(config: FusionConfig, track_id: str, position_m: float, slack_m: float = 0.0) -> bool:
    """Whether ``position_m`` lies on the track (inside the depot), ``slack_m`` either side."""
    length = config.track_lengths.get(track_id)
    return length is None or -slack_m <= position_m <= length + slack_m
