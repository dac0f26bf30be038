"""Rendering of each camera's view of the simulated depot, with exact labels.

Pure: numpy + OpenCV drawing into arrays, no files, no sockets. Cameras are ideal pinhole
cameras built with :func:`schemas.geometry.pinhole_extrinsics` from the camera's ``pose``, so
the rendered floor agrees with the calibration homography in the facility config.

Geometry. A locomotive is a set of boxes in its local frame: ``a`` metres from the head end
towards the tail along the track, ``b`` metres across (left positive), ``z`` metres above rail
level. The head end has a tall cab with windscreen, a yellow stripe, headlights and a yellow
buffer beam; the tail end has a lower hood step, a red buffer beam and red tail lights. A
number plate (a light panel 1.6 m x 0.45 m with dark text ``<series>-<4 digits>``) is painted
on both cab sides. Faces are drawn with a z-buffer (inverse depth, per pixel), so occlusion
between locomotives is exact.

Label convention (the position estimator relies on it):

* ``head`` / ``tail`` box: the image bounding box of the 3D *end block* spanning the last
  0.6 m of the body along the track at that end, the full body width (3.1 m) and height 0 to
  1.4 m above rail level. Its bottom-centre pixel therefore lies on the floor near the end.
  ``end_pixel`` records the exact pixel of the end's rail-level centre point (the track centre
  line at ``head_m`` / ``tail_m``), so the bias of "bottom-centre of the box" can be measured.
* ``plate`` box: the bounding box of the visible plate panel on the side facing the camera,
  with the true ``plate`` text and ``model``.
* ``visible_fraction``: share of the object's projected area that is inside the image and not
  hidden behind another locomotive. Labels below ``min_visible`` (default 0.4) are dropped.
  Boxes are clipped to the image.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import cv2
import numpy as np
from numpy.typing import NDArray

from schemas.facility import Camera, FacilityConfig
from schemas.geometry import pinhole_extrinsics, point_at_position
from services.simulator.world import Placement, WorldState, stable_seed

FloatArray = NDArray[np.float64]
Image = NDArray[np.uint8]

BODY_WIDTH_M = 3.1
END_BLOCK_DEPTH_M = 0.6
END_BLOCK_HEIGHT_M = 1.4
PLATE_SIZE_M = (1.6, 0.45)
PLATE_CENTRE_A_M = 2.2  # along the cab side, from the head end
PLATE_CENTRE_Z_M = 2.45
CLASSES: tuple[str, ...] = ("head", "tail", "plate")
"""Detector classes, in YOLO class-index order."""

_LIGHT = np.array([0.3, -0.35, 0.89]) / np.linalg.norm([0.3, -0.35, 0.89])
_SUBPIXEL_SHIFT = 4  # fillConvexPoly fixed point: 1/16 px, so small parts do not jitter
_PLATE_CODE = 15


@dataclass(frozen=True)
class ObjectLabel:
    """One labelled object in one frame."""

    cls: Literal["head", "tail", "plate"]
    locomotive_id: str
    model: str
    plate: str
    track_id: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 pixels, clipped to the image
    visible_fraction: float
    end_pixel: tuple[float, float] | None = None  # rail-level centre of the end (head/tail)
    end_position_m: float | None = None  # true head_m / tail_m (head/tail)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        out: dict[str, object] = {
            "cls": self.cls,
            "locomotive_id": self.locomotive_id,
            "model": self.model,
            "plate": self.plate,
            "track_id": self.track_id,
            "box": [round(v, 2) for v in self.box],
            "visible_fraction": round(self.visible_fraction, 3),
        }
        if self.end_pixel is not None:
            out["end_pixel"] = [round(v, 2) for v in self.end_pixel]
            out["end_position_m"] = self.end_position_m
        return out


@dataclass(frozen=True)
class RenderedFrame:
    """A camera image (BGR, uint8) at one tick with its labels."""

    camera_id: str
    tick: int
    image: Image
    labels: tuple[ObjectLabel, ...]


@dataclass
class CameraView:
    """A camera's projection and its static background (floor, rails), built once."""

    camera: Camera
    k: FloatArray
    r: FloatArray
    t: FloatArray
    position: FloatArray
    background: Image
    floor_from_pixel: FloatArray = field(repr=False)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.camera.width, self.camera.height

    def to_camera(self, pts: FloatArray) -> FloatArray:
        """World points (N x 3) in camera coordinates (x right, y down, z forward)."""
        return np.asarray((self.r @ pts.T).T + self.t)

    def project(self, pts: FloatArray) -> FloatArray:
        """World points (N x 3) to pixels (N x 2); points behind the camera give inf."""
        pc = self.to_camera(pts)
        uvw = (self.k @ pc.T).T
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = uvw[:, :2] / uvw[:, 2:3]
        uv[pc[:, 2] <= 1e-6] = np.inf
        return np.asarray(uv)


def camera_view(facility: FacilityConfig, camera: Camera) -> CameraView:
    """Projection and background of one camera; it must have a ``pose``."""
    if camera.pose is None:
        raise ValueError(
            f"camera {camera.id} has no pose; the simulator renders only cameras with "
            "pose: {position, look_at, hfov_deg} in facility.yaml"
        )
    k, r, t = pinhole_extrinsics(
        camera.pose.position, camera.pose.look_at, camera.pose.hfov_deg, camera.width, camera.height
    )
    h_floor = k @ np.c_[r[:, 0], r[:, 1], t]
    view = CameraView(
        camera=camera,
        k=k,
        r=r,
        t=t,
        position=np.asarray(camera.pose.position, dtype=np.float64),
        background=np.zeros((camera.height, camera.width, 3), np.uint8),
        floor_from_pixel=np.linalg.inv(h_floor),
    )
    view.background = _floor_background(facility, view)
    return view


def _floor_background(facility: FacilityConfig, view: CameraView) -> Image:
    """Concrete floor with slab joints and stains, rails and sleepers, walkway lines."""
    w, h = view.size
    uu, vv = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    hom = view.floor_from_pixel
    den = hom[2, 0] * uu + hom[2, 1] * vv + hom[2, 2]
    fx = (hom[0, 0] * uu + hom[0, 1] * vv + hom[0, 2]) / den
    fy = (hom[1, 0] * uu + hom[1, 1] * vv + hom[1, 2]) / den
    # Stains and wear: smooth functions of floor position, so neighbouring cameras agree.
    rng = np.random.default_rng(stable_seed("floor", facility.facility_id))
    tone = np.full_like(fx, 118.0)
    for _ in range(6):
        kx, ky = rng.uniform(0.1, 0.9, 2)
        phase = rng.uniform(0, 2 * np.pi)
        tone += rng.uniform(2, 7) * np.sin(kx * fx + ky * fy + phase)
    joint = (np.abs(((fx + 3.0) % 6.0) - 3.0) > 2.96) | (np.abs(((fy + 3.0) % 6.0) - 3.0) > 2.96)
    tone[joint] -= 30
    img = np.stack([tone * 0.98, tone, tone * 1.03], axis=-1)
    img = np.clip(img, 0, 255).astype(np.uint8)

    def floor_quad(corners: list[tuple[float, float]], colour: tuple[int, int, int]) -> None:
        pts = np.array([[x, y, 0.0] for x, y in corners])
        uv = view.project(pts)
        if not np.all(np.isfinite(uv)):
            return
        cv2.fillConvexPoly(
            img,
            np.round(uv * (1 << _SUBPIXEL_SHIFT)).astype(np.int32),
            colour,
            lineType=cv2.LINE_AA,
            shift=_SUBPIXEL_SHIFT,
        )

    for track in facility.tracks:
        pts = np.asarray(track.polyline, dtype=np.float64)
        for p0, p1 in itertools.pairwise(pts):
            d = (p1 - p0) / np.linalg.norm(p1 - p0)
            n = np.array([-d[1], d[0]])
            # Extend past the track ends so arriving locomotives still stand on rails.
            a0, a1 = p0 - d * 40.0, p1 + d * 40.0
            length = float(np.linalg.norm(a1 - a0))
            band = functools.partial(_band, a0, d, n)
            floor_quad(band(-1.0, 1.0, 0, length), (70, 74, 78))  # ballast between the rails
            s = 0.0
            while s < length:
                floor_quad(band(-1.3, 1.3, s, s + 0.24), (52, 62, 72))  # sleepers
                s += 0.6
            for off in (-0.76, 0.76):  # 1520 mm gauge
                floor_quad(band(off - 0.04, off + 0.04, 0, length), (170, 175, 180))
            for off in (-2.35, 2.35):  # yellow walkway lines
                floor_quad(band(off - 0.05, off + 0.05, 0, length), (40, 190, 220))
    return img


def _band(
    origin: FloatArray, d: FloatArray, n: FloatArray, off0: float, off1: float, s0: float, s1: float
) -> list[tuple[float, float]]:
    """Floor rectangle along a track segment: [s0, s1] along it, [off0, off1] across."""
    corners = [(s0, off0), (s1, off0), (s1, off1), (s0, off1)]
    return [(float(x), float(y)) for x, y in (origin + d * a + n * b for a, b in corners)]


def _box_corners(a0: float, a1: float, b0: float, b1: float, z0: float, z1: float) -> FloatArray:
    return np.array(
        [[a, b, z] for a in (a0, a1) for b in (b0, b1) for z in (z0, z1)], dtype=np.float64
    )


# Faces of a box as corner indices (into _box_corners order) and the local outward axis.
_BOX_FACES: tuple[tuple[tuple[int, int, int, int], tuple[int, int, int]], ...] = (
    ((0, 1, 3, 2), (-1, 0, 0)),  # a = a0 (towards head)
    ((4, 6, 7, 5), (1, 0, 0)),  # a = a1
    ((0, 4, 5, 1), (0, -1, 0)),  # b = b0
    ((2, 3, 7, 6), (0, 1, 0)),  # b = b1
    ((0, 2, 6, 4), (0, 0, -1)),  # z = z0
    ((1, 5, 7, 3), (0, 0, 1)),  # z = z1
)

Colour = tuple[int, int, int]


@dataclass(frozen=True)
class _Part:
    box: tuple[float, float, float, float, float, float]
    colour: Colour


@dataclass(frozen=True)
class _Decal:
    """A flat coloured rectangle on a face: axis ('a' or 'b'), face coordinate, outward sign."""

    axis: Literal["a", "b"]
    at: float
    sign: int
    u: tuple[float, float]  # extent along the other horizontal axis
    z: tuple[float, float]
    colour: Colour


def _scale(colour: Colour, k: float) -> Colour:
    return (
        min(255, int(colour[0] * k)),
        min(255, int(colour[1] * k)),
        min(255, int(colour[2] * k)),
    )


def _locomotive_parts(length: float, livery: Colour) -> tuple[list[_Part], list[_Decal]]:
    """Boxes and decals of a locomotive of this length (local frame, head at a=0)."""
    hw = BODY_WIDTH_M / 2
    ln = length
    dark = (38, 38, 42)
    yellow, red, white = (20, 200, 245), (40, 40, 200), (245, 245, 245)
    glass = (80, 58, 40)
    parts = [
        _Part((0.0, 0.35, -1.1, -0.7, 0.95, 1.25), dark),  # head buffers
        _Part((0.0, 0.35, 0.7, 1.1, 0.95, 1.25), dark),
        _Part((0.35, 0.6, -hw, hw, 0.6, 1.4), yellow),  # head buffer beam
        _Part((ln - 0.6, ln - 0.35, -hw, hw, 0.6, 1.4), red),  # tail buffer beam
        _Part((ln - 0.35, ln, -1.1, -0.7, 0.95, 1.25), dark),  # tail buffers
        _Part((ln - 0.35, ln, 0.7, 1.1, 0.95, 1.25), dark),
        _Part((ln - 0.35, ln, -0.15, 0.15, 0.9, 1.2), dark),  # tail coupler
        _Part((0.0, 0.35, -0.15, 0.15, 0.9, 1.2), dark),  # head coupler
        _Part((1.7, 4.9, -1.15, 1.15, 0.12, 0.95), dark),  # bogies
        _Part((ln - 4.9, ln - 1.7, -1.15, 1.15, 0.12, 0.95), dark),
        _Part((0.6, ln - 0.6, -hw + 0.05, hw - 0.05, 0.95, 1.4), (60, 60, 66)),  # frame
        _Part((0.6, 3.8, -hw, hw, 1.4, 4.5), livery),  # cab
        _Part((0.7, 3.7, -hw + 0.15, hw - 0.15, 4.5, 4.62), (190, 190, 185)),  # cab roof
        _Part((3.8, ln - 1.6, -1.3, 1.3, 1.4, 3.9), _scale(livery, 0.85)),  # hood
        _Part((ln - 1.6, ln - 0.6, -1.3, 1.3, 1.4, 2.5), _scale(livery, 0.75)),  # tail step
    ]
    decals = [
        # Cab front: windscreen, yellow stripe, headlight; buffer-beam headlights.
        _Decal("a", 0.6, -1, (-1.3, -0.15), (3.2, 4.1), glass),
        _Decal("a", 0.6, -1, (0.15, 1.3), (3.2, 4.1), glass),
        _Decal("a", 0.6, -1, (-hw, hw), (1.6, 2.0), yellow),
        _Decal("a", 0.6, -1, (-0.2, 0.2), (4.18, 4.42), white),
        _Decal("a", 0.35, -1, (-1.4, -1.15), (1.0, 1.3), white),
        _Decal("a", 0.35, -1, (1.15, 1.4), (1.0, 1.3), white),
        # Tail: red lights on the step and the beam, white chevron on the beam.
        _Decal("a", ln - 0.6, 1, (-1.2, -0.9), (1.9, 2.2), red),
        _Decal("a", ln - 0.6, 1, (0.9, 1.2), (1.9, 2.2), red),
        _Decal("a", ln - 0.35, 1, (-0.5, 0.5), (0.85, 1.15), white),
    ]
    for side in (-1, 1):
        b = side * hw
        decals += [
            _Decal("b", b, side, (0.9, 2.0), (3.2, 4.1), glass),  # cab side windows
            _Decal("b", b, side, (2.4, 3.5), (3.2, 4.1), glass),
            _Decal("b", b, side, (0.6, 3.8), (1.6, 2.0), yellow),  # head stripe on the cab
            _Decal("b", side * 1.3, side, (3.8, ln - 1.6), (2.3, 2.45), white),  # hood stripe
        ]
    return parts, decals


@lru_cache(maxsize=256)
def plate_texture(text: str) -> Image:
    """The painted number panel: dark text on a light panel with a dark border."""
    w, h = 448, 126  # 1.6 m x 0.45 m
    img = np.full((h, w, 3), (228, 232, 232), np.uint8)
    cv2.rectangle(img, (4, 4), (w - 5, h - 5), (30, 30, 30), 5)
    font = cv2.FONT_HERSHEY_DUPLEX
    thickness = 5
    (tw, th), _ = cv2.getTextSize(text, font, 1.0, thickness)
    scale = min((w - 36) / tw, (h - 40) / th)
    (tw, th), _ = cv2.getTextSize(text, font, scale, thickness)
    org = ((w - tw) // 2, (h + th) // 2)
    cv2.putText(img, text, org, font, scale, (25, 25, 25), thickness, cv2.LINE_AA)
    return img


@dataclass
class _Canvas:
    image: Image
    invz: NDArray[np.float32]
    owner: NDArray[np.int16]


@dataclass(frozen=True)
class _Pose:
    """Local (a, b, z) -> world transform of one placed locomotive."""

    origin: FloatArray
    a_dir: FloatArray
    b_dir: FloatArray

    def world(self, local: FloatArray) -> FloatArray:
        return np.asarray(
            self.origin
            + local[:, 0:1] * self.a_dir
            + local[:, 1:2] * self.b_dir
            + local[:, 2:3] * np.array([0.0, 0.0, 1.0])
        )

    def direction(self, axis: tuple[int, int, int]) -> FloatArray:
        return np.asarray(
            axis[0] * self.a_dir + axis[1] * self.b_dir + axis[2] * np.array([0.0, 0.0, 1.0])
        )


def _pose(facility: FacilityConfig, p: Placement) -> _Pose:
    polyline = facility.track(p.identity.track_id).polyline
    head_xy, _ = point_at_position(polyline, p.head_m)
    tail_xy, _ = point_at_position(polyline, p.tail_m)
    h = np.array([head_xy[0], head_xy[1], 0.0])
    t = np.array([tail_xy[0], tail_xy[1], 0.0])
    a_dir = (t - h) / max(np.linalg.norm(t - h), 1e-9)
    b_dir = np.cross(np.array([0.0, 0.0, 1.0]), a_dir)
    return _Pose(origin=h, a_dir=a_dir, b_dir=b_dir)


def _face_raster(
    view: CameraView, quad: FloatArray, normal: FloatArray
) -> tuple[tuple[int, int, int, int], NDArray[np.bool_], NDArray[np.float32], FloatArray] | None:
    """Pixels of a planar world quad: (region, mask, inverse depth, pixel corners) or None."""
    centre = quad.mean(axis=0)
    if float(np.dot(normal, view.position - centre)) <= 1e-9:
        return None  # back face
    pc = view.to_camera(quad)
    if np.any(pc[:, 2] < 0.05):
        return None  # crosses the camera plane: never happens for depot geometry
    uv = (view.k @ pc.T).T
    uv = uv[:, :2] / uv[:, 2:3]
    w, h = view.size
    x0 = max(int(np.floor(uv[:, 0].min())), 0)
    x1 = min(int(np.ceil(uv[:, 0].max())) + 1, w)
    y0 = max(int(np.floor(uv[:, 1].min())), 0)
    y1 = min(int(np.ceil(uv[:, 1].max())) + 1, h)
    if x1 <= x0 or y1 <= y0:
        return None
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    local = np.round((uv - [x0, y0]) * (1 << _SUBPIXEL_SHIFT)).astype(np.int32)
    cv2.fillConvexPoly(mask, local, 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_SHIFT)
    # Inverse depth is affine in pixel coordinates on a plane: 1/z = (n . K^-1 [u v 1]) / c.
    n_c = view.r @ normal
    c = float(n_c @ pc[0])
    fx, fy, cx, cy = view.k[0, 0], view.k[1, 1], view.k[0, 2], view.k[1, 2]
    ca = n_c[0] / fx / c
    cb = n_c[1] / fy / c
    cc = (n_c[2] - n_c[0] * cx / fx - n_c[1] * cy / fy) / c
    us = np.arange(x0, x1, dtype=np.float32)
    vs = np.arange(y0, y1, dtype=np.float32)
    invz = (np.float32(cb) * vs[:, None] + np.float32(ca) * us[None, :] + np.float32(cc)).astype(
        np.float32
    )
    return (x0, y0, x1, y1), mask.astype(bool), invz, uv


def _shade(colour: Colour, normal: FloatArray) -> Colour:
    k = 0.62 + 0.45 * max(0.0, float(normal @ _LIGHT))
    return _scale(colour, k)


def _draw_quad(
    canvas: _Canvas,
    view: CameraView,
    quad: FloatArray,
    normal: FloatArray,
    colour: Colour,
    code: int,
    texture: Image | None = None,
    bias: float = 0.0,
) -> None:
    raster = _face_raster(view, quad, normal)
    if raster is None:
        return
    (x0, y0, x1, y1), mask, invz, uv = raster
    zbuf = canvas.invz[y0:y1, x0:x1]
    inside = mask & (invz * (1.0 + bias) > zbuf)
    if not inside.any():
        return
    region = canvas.image[y0:y1, x0:x1]
    if texture is None:
        region[inside] = _shade(colour, normal)
    else:
        th, tw = texture.shape[:2]
        src = np.array([[0, 0], [tw, 0], [tw, th], [0, th]], np.float32)
        hom = cv2.getPerspectiveTransform(src, (uv - [x0, y0]).astype(np.float32))
        warped = cv2.warpPerspective(
            texture, hom, (x1 - x0, y1 - y0), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE
        )
        k = 0.62 + 0.45 * max(0.0, float(normal @ _LIGHT))
        region[inside] = np.clip(warped[inside].astype(np.float32) * k, 0, 255).astype(np.uint8)
    zbuf[inside] = invz[inside]
    canvas.owner[y0:y1, x0:x1][inside] = code


def _draw_box(canvas: _Canvas, view: CameraView, pose: _Pose, part: _Part, code: int) -> None:
    corners = pose.world(_box_corners(*part.box))
    for idx, axis in _BOX_FACES:
        _draw_quad(canvas, view, corners[list(idx)], pose.direction(axis), part.colour, code)


def _decal_quad(decal: _Decal, lift: float = 0.01) -> FloatArray:
    at = decal.at + decal.sign * lift
    (u0, u1), (z0, z1) = decal.u, decal.z
    if decal.axis == "a":
        pts = [[at, u0, z0], [at, u1, z0], [at, u1, z1], [at, u0, z1]]
    else:
        pts = [[u0, at, z0], [u1, at, z0], [u1, at, z1], [u0, at, z1]]
    return np.asarray(pts, dtype=np.float64)


def _plate_quad(pose: _Pose, side: int) -> tuple[FloatArray, FloatArray]:
    """World corners of the plate on one side (TL, TR, BR, BL as a viewer reads it) + normal."""
    pw, ph = PLATE_SIZE_M
    normal = pose.direction((0, side, 0))
    right = np.cross(np.array([0.0, 0.0, 1.0]), normal)  # reading direction seen from outside
    centre = pose.world(
        np.array([[PLATE_CENTRE_A_M, side * (BODY_WIDTH_M / 2 + 0.015), PLATE_CENTRE_Z_M]])
    )[0]
    up = np.array([0.0, 0.0, 1.0])
    quad = np.array(
        [
            centre - right * pw / 2 + up * ph / 2,
            centre + right * pw / 2 + up * ph / 2,
            centre + right * pw / 2 - up * ph / 2,
            centre - right * pw / 2 - up * ph / 2,
        ]
    )
    return quad, normal


def _polygon_area(poly: FloatArray) -> float:
    return float(abs(cv2.contourArea(poly.astype(np.float32))))


def _clipped_area(poly: FloatArray, w: int, h: int) -> float:
    rect = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    area, _ = cv2.intersectConvexConvex(poly.astype(np.float32), rect)
    return float(area)


class Renderer:
    """Renders camera frames of a facility; caches per-camera backgrounds and textures.

    The output depends only on the facility, the world state and the camera (deterministic).
    """

    def __init__(self, facility: FacilityConfig, cameras: list[str] | None = None) -> None:
        self.facility = facility
        wanted = cameras or [c.id for c in facility.cameras if c.pose is not None]
        self.views = {cid: camera_view(facility, facility.camera(cid)) for cid in wanted}
        self._noise = _noise_bank(
            max(c.height for c in facility.cameras), max(c.width for c in facility.cameras)
        )

    def render(self, state: WorldState, camera_id: str, min_visible: float = 0.4) -> RenderedFrame:
        """The camera's frame at this state, with labels of objects at least ``min_visible``."""
        clean, labels = self.render_clean(state, camera_id, min_visible)
        return RenderedFrame(
            camera_id=camera_id,
            tick=state.tick,
            image=self.finish(clean, state, camera_id),
            labels=labels,
        )

    def scene_key(self, state: WorldState, camera_id: str) -> tuple[object, ...]:
        """What the clean image of a camera depends on: equal keys give equal clean images."""
        view = self.views[camera_id]
        key: list[object] = [camera_id]
        for placement in state.placements:
            pose = _pose(self.facility, placement)
            if self._in_view(view, pose, placement.identity.model.length_m):
                key.append((placement.locomotive_id, round(placement.head_m, 5)))
        return tuple(key)

    def finish(self, clean: Image, state: WorldState, camera_id: str) -> Image:
        """Light level and sensor noise of this tick applied to a clean image."""
        return _finish(clean, state, camera_id, self._noise)

    def render_clean(
        self, state: WorldState, camera_id: str, min_visible: float = 0.4
    ) -> tuple[Image, tuple[ObjectLabel, ...]]:
        """The image before light level and noise, and its labels."""
        view = self.views[camera_id]
        w, h = view.size
        canvas = _Canvas(
            image=view.background.copy(),
            invz=np.zeros((h, w), np.float32),
            owner=np.zeros((h, w), np.int16),
        )
        drawn: list[tuple[int, Placement, _Pose]] = []
        for index, placement in enumerate(state.placements):
            pose = _pose(self.facility, placement)
            if not self._in_view(view, pose, placement.identity.model.length_m):
                continue
            self._draw_locomotive(canvas, view, pose, placement, (index + 1) * 16)
            drawn.append(((index + 1) * 16, placement, pose))
        labels: list[ObjectLabel] = []
        for code, placement, pose in drawn:
            labels += self._labels(canvas, view, pose, placement, code, min_visible)
        return canvas.image, tuple(labels)

    @staticmethod
    def _in_view(view: CameraView, pose: _Pose, length: float) -> bool:
        hw = BODY_WIDTH_M / 2
        uv = view.project(pose.world(_box_corners(-0.5, length + 0.5, -hw, hw, 0.0, 4.7)))
        if not np.all(np.isfinite(uv)):
            return True
        w, h = view.size
        return bool(
            uv[:, 0].max() >= 0
            and uv[:, 0].min() < w
            and uv[:, 1].max() >= 0
            and uv[:, 1].min() < h
        )

    def _draw_locomotive(
        self, canvas: _Canvas, view: CameraView, pose: _Pose, placement: Placement, code: int
    ) -> None:
        ident = placement.identity
        parts, decals = _locomotive_parts(ident.model.length_m, ident.livery_bgr)
        for i, part in enumerate(parts):
            _draw_box(canvas, view, pose, part, code + min(i, 14))
        for decal in decals:
            axis = (decal.sign, 0, 0) if decal.axis == "a" else (0, decal.sign, 0)
            quad = pose.world(_decal_quad(decal))
            _draw_quad(canvas, view, quad, pose.direction(axis), decal.colour, code, bias=1e-4)
        texture = plate_texture(ident.plate)
        for side in (-1, 1):
            quad, normal = _plate_quad(pose, side)
            _draw_quad(
                canvas, view, quad, normal, (0, 0, 0), code + _PLATE_CODE, texture, bias=2e-4
            )

    def _labels(
        self,
        canvas: _Canvas,
        view: CameraView,
        pose: _Pose,
        placement: Placement,
        code: int,
        min_visible: float,
    ) -> list[ObjectLabel]:
        ident = placement.identity
        length = ident.model.length_m
        w, h = view.size
        hw = BODY_WIDTH_M / 2
        out: list[ObjectLabel] = []
        loco_id, model_name, plate, track_id = (
            ident.locomotive_id,
            ident.model.name,
            ident.plate,
            ident.track_id,
        )
        for cls, a0, a1, a_end, pos in (
            ("head", 0.0, END_BLOCK_DEPTH_M, 0.0, placement.head_m),
            ("tail", length - END_BLOCK_DEPTH_M, length, length, placement.tail_m),
        ):
            corners = pose.world(_box_corners(a0, a1, -hw, hw, 0.0, END_BLOCK_HEIGHT_M))
            uv = view.project(corners)
            if not np.all(np.isfinite(uv)):
                continue
            hull = np.asarray(cv2.convexHull(uv.astype(np.float32)), np.float64).reshape(-1, 2)
            total = _polygon_area(hull)
            if total < 1.0:
                continue
            in_image = _clipped_area(hull, w, h)
            if in_image <= 0:
                continue
            visible = (in_image / total) * (1.0 - self._occluded_share(canvas, view, corners, code))
            if visible < min_visible:
                continue
            end_uv = view.project(pose.world(np.array([[a_end, 0.0, 0.0]])))[0]
            out.append(
                ObjectLabel(
                    cls=cls,  # type: ignore[arg-type]
                    box=_clip_box(uv, w, h),
                    visible_fraction=float(visible),
                    end_pixel=(float(end_uv[0]), float(end_uv[1])),
                    end_position_m=round(pos, 4),
                    locomotive_id=loco_id,
                    model=model_name,
                    plate=plate,
                    track_id=track_id,
                )
            )
        for side in (-1, 1):
            quad, normal = _plate_quad(pose, side)
            if float(np.dot(normal, view.position - quad.mean(axis=0))) <= 0:
                continue
            uv = view.project(quad)
            if not np.all(np.isfinite(uv)):
                continue
            total = _polygon_area(np.asarray(uv, np.float64))
            if total < 1.0:
                continue
            mine = canvas.owner == code + _PLATE_CODE
            x0, y0, x1, y1 = _clip_box(uv, w, h)
            region = mine[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))]
            visible = float(region.sum()) / total
            if min(visible, 1.0) < min_visible:
                continue
            ys, xs = np.nonzero(region)
            box = (
                float(x0 + xs.min()),
                float(y0 + ys.min()),
                float(x0 + xs.max() + 1),
                float(y0 + ys.max() + 1),
            )
            out.append(
                ObjectLabel(
                    cls="plate",
                    box=box,
                    visible_fraction=min(visible, 1.0),
                    locomotive_id=loco_id,
                    model=model_name,
                    plate=plate,
                    track_id=track_id,
                )
            )
        return out

    @staticmethod
    def _occluded_share(canvas: _Canvas, view: CameraView, corners: FloatArray, code: int) -> float:
        """Share of the end block's in-image pixels hidden behind another locomotive."""
        w, h = view.size
        local = np.zeros((h, w), np.float32)  # nearest inverse depth of the block's own faces
        touched = np.zeros((h, w), bool)
        lo = np.array([w, h])
        hi = np.array([0, 0])
        for idx, axis_local in _BOX_FACES:
            quad = corners[list(idx)]
            normal = _world_normal(corners, axis_local)
            raster = _face_raster(view, quad, normal)
            if raster is None:
                continue
            (x0, y0, x1, y1), mask, invz, _ = raster
            sub = local[y0:y1, x0:x1]
            sub[mask] = np.maximum(sub[mask], invz[mask])
            touched[y0:y1, x0:x1] |= mask
            lo = np.minimum(lo, [x0, y0])
            hi = np.maximum(hi, [x1, y1])
        if not touched.any():
            return 1.0
        sl = np.s_[lo[1] : hi[1], lo[0] : hi[0]]
        px = touched[sl]
        owner = canvas.owner[sl]
        others = ((owner // 16) * 16 != code) & (owner != 0)
        nearer = canvas.invz[sl] > local[sl] * (1.0 + 1e-4)
        hidden = px & others & nearer
        return float(hidden.sum()) / float(px.sum())


def _world_normal(corners: FloatArray, axis: tuple[int, int, int]) -> FloatArray:
    """Outward normal of a placed box face from its corners (a, b, z local axes)."""
    a_dir = corners[4] - corners[0]
    b_dir = corners[2] - corners[0]
    z_dir = corners[1] - corners[0]
    vec = axis[0] * a_dir + axis[1] * b_dir + axis[2] * z_dir
    return np.asarray(vec / np.linalg.norm(vec))


def _clip_box(uv: FloatArray, w: int, h: int) -> tuple[float, float, float, float]:
    return (
        float(np.clip(uv[:, 0].min(), 0, w)),
        float(np.clip(uv[:, 1].min(), 0, h)),
        float(np.clip(uv[:, 0].max(), 0, w)),
        float(np.clip(uv[:, 1].max(), 0, h)),
    )


def _noise_bank(h: int, w: int, count: int = 4) -> NDArray[np.int16]:
    """Unit sensor-noise frames (x16), fixed seed: per-frame noise is picked from these."""
    rng = np.random.default_rng(20261121)
    return np.clip(rng.normal(0, 16, (count, h, w, 3)), -127, 127).astype(np.int16)


def _finish(image: Image, state: WorldState, camera_id: str, noise: NDArray[np.int16]) -> Image:
    """Apply the light level and sensor noise (deterministic per tick and camera)."""
    out = cv2.convertScaleAbs(image, alpha=state.light_level) if state.light_level != 1 else image
    if state.noise_sigma > 0:
        h, w = out.shape[:2]
        pick = stable_seed(camera_id, state.tick)
        bank = noise[pick % len(noise), :h, :w]
        shift = (pick >> 8) % 64  # vary the pattern between frames without new draws
        bank = np.roll(bank, shift, axis=1)
        out = cv2.addWeighted(
            out.astype(np.int16), 1.0, bank, state.noise_sigma / 16.0, 0.0, dtype=cv2.CV_8U
        )
    return np.ascontiguousarray(out)
