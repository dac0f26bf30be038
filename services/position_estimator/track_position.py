"""Pure core of the position estimator: detections in one camera image -> track positions.

A head or tail box is the image box of the locomotive's end block (the last 0.6 m of the body,
full width, rail level to 1.4 m high). Its bottom-centre pixel lies on the floor close to the end,
so it is the floor contact point we map through the camera's pixel -> floor homography. The floor
point is then projected onto the nearest track centre line; if it is within that track's
tolerance, the arc length along the polyline is the position.

No Kafka, S3 or model code here: the functions take schema types and the facility config.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np

from schemas.estimates import BoundingBox, Detection, PositionEstimate, TrackObservation
from schemas.facility import Camera, Track, place_on_tracks
from schemas.frames import FrameRef
from schemas.geometry import Point, apply_homography

PLACED_CLASSES = ("head", "tail")
"""Detection classes whose floor contact point is a locomotive end (plates hang above it)."""


def floor_contact_pixel(box: BoundingBox) -> Point:
    """The pixel where an end box touches the floor: its bottom-centre."""
    return ((box.x1 + box.x2) / 2.0, box.y2)


def observe(
    detection: Detection,
    camera: Camera,
    tracks: Sequence[Track],
    scale: tuple[float, float] = (1.0, 1.0),
) -> TrackObservation | None:
    """Place one head/tail detection on the floor and, if close enough, on a track.

    ``scale`` maps frame pixels to the calibration's pixels when the frame was stored at another
    resolution. Returns None when the contact pixel maps to no finite floor point.
    """
    u, v = floor_contact_pixel(detection.bbox)
    pixel = (u * scale[0], v * scale[1])
    floor = apply_homography(camera.pixel_to_floor, [pixel])[0]
    if not np.all(np.isfinite(floor)):
        return None
    point = (float(floor[0]), float(floor[1]))
    track, position, distance = place_on_tracks(point, tracks)
    return TrackObservation(
        kind=detection.cls,
        floor_x_m=round(point[0], 3),
        floor_y_m=round(point[1], 3),
        track_id=track.id if track is not None else None,
        position_m=round(position, 3) if position is not None else None,
        distance_to_track_m=round(distance, 3) if distance is not None else None,
        confidence=detection.confidence,
    )


def observations(
    detections: Sequence[Detection],
    camera: Camera,
    tracks: Sequence[Track],
    scale: tuple[float, float] = (1.0, 1.0),
) -> list[TrackObservation]:
    """Track observations of every head/tail detection (plates are not placed); none for a
    camera without calibration (its detections are shown, not placed)."""
    if not camera.calibrated:
        return []
    out = []
    for det in detections:
        if det.cls not in PLACED_CLASSES:
            continue
        obs = observe(det, camera, tracks, scale)
        if obs is not None:
            out.append(obs)
    return out


def position_estimate(
    *,
    flow: str,
    frame: FrameRef,
    camera: Camera,
    tracks: Sequence[Track],
    detections: Sequence[Detection],
    estimator: str,
    model_version: str,
    estimated_at: datetime,
) -> PositionEstimate:
    """The PositionEstimate of one frame from its detections (in the frame's pixels)."""
    scale = (camera.width / frame.width, camera.height / frame.height)
    return PositionEstimate(
        flow=flow,
        camera_id=frame.camera_id,
        frame=frame,
        estimator=estimator,
        model_version=model_version,
        estimated_at=estimated_at,
        detections=list(detections),
        observations=observations(detections, camera, tracks, scale),
    )
