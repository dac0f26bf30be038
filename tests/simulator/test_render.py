"""Rendering: determinism, labels against an independent projection, occlusion, plates."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

from schemas.facility import FacilityConfig
from schemas.geometry import apply_homography, pinhole_extrinsics
from services.simulator.render import Renderer
from services.simulator.world import Simulation, load_scenario
from tests.simulator.scenes import scenario


def _one_loco(head_m: float, track: str = "T1", facing: str = "end", model: str = "TEM2") -> dict:
    return {
        "id": "L1",
        "model": model,
        "number": 1234,
        "track": track,
        "facing": facing,
        "keyframes": [{"at_s": 0, "head_m": head_m}],
    }


def test_rendering_is_deterministic_per_seed(facility: FacilityConfig, renderer: Renderer) -> None:
    sc = load_scenario("test-busy")

    def digest(seed: int) -> str:
        sim = Simulation(facility, sc, seed)
        state = sim.state(100)
        frames = [renderer.render(state, cam) for cam in ("cam-s1", "cam-n2")]
        return hashlib.sha256(b"".join(f.image.tobytes() for f in frames)).hexdigest()

    assert digest(9001) == digest(9001)
    assert digest(9001) != digest(9002)


def test_head_box_matches_an_independent_projection(
    facility: FacilityConfig, renderer: Renderer
) -> None:
    # TEM2 on T1 (y = 4) facing +x with its head at x = 20: the head end block spans
    # x 19.4..20, y 2.45..5.55, z 0..1.4 (convention in render.py's docstring).
    sim = Simulation(facility, scenario(locomotives=[_one_loco(20.0)]), seed=1)
    frame = renderer.render(sim.state(0), "cam-s2")
    heads = [lb for lb in frame.labels if lb.cls == "head"]
    assert len(heads) == 1
    cam = facility.camera("cam-s2")
    assert cam.pose is not None
    k, r, t = pinhole_extrinsics(
        cam.pose.position, cam.pose.look_at, cam.pose.hfov_deg, cam.width, cam.height
    )
    corners = np.array([[x, y, z] for x in (19.4, 20.0) for y in (2.45, 5.55) for z in (0.0, 1.4)])
    pc = (r @ corners.T).T + t
    uv = (k @ pc.T).T
    uv = uv[:, :2] / uv[:, 2:3]
    expected = (uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max())
    assert heads[0].box == pytest.approx(expected, abs=0.5)
    # The rail-level end point agrees with the camera's calibration homography.
    floor_px = apply_homography(cam.floor_to_pixel, [(20.0, 4.0)])[0]
    assert heads[0].end_pixel == pytest.approx(tuple(floor_px), abs=3.0)
    assert heads[0].end_position_m == 20.0
    assert heads[0].plate == "TEM2-1234"
    # The box bottom-centre maps to the floor inside the end block's footprint (what the
    # position estimator assumes): near the end along the track, within the body across it.
    x0, _, x1, y1 = heads[0].box
    fx, fy = apply_homography(cam.pixel_to_floor, [((x0 + x1) / 2, y1)])[0]
    assert abs(fx - 20.0) < 1.0
    assert abs(fy - 4.0) < 1.6


def test_head_and_tail_look_different(facility: FacilityConfig, renderer: Renderer) -> None:
    sim_head = Simulation(facility, scenario(locomotives=[_one_loco(20.0)]), seed=1)
    # Facing start: head at the smaller position, so the tail end sits where the head was.
    tail_first = _one_loco(20.0 - 16.97, facing="start")
    sim_tail = Simulation(facility, scenario(locomotives=[tail_first]), seed=1)
    head = renderer.render(sim_head.state(0), "cam-s2")
    tail = renderer.render(sim_tail.state(0), "cam-s2")
    (hb,) = [lb.box for lb in head.labels if lb.cls == "head"]
    (tb,) = [lb.box for lb in tail.labels if lb.cls == "tail"]
    assert hb == pytest.approx(tb, abs=0.5)  # same place, other end of the locomotive
    x0, y0, x1, y1 = (int(v) for v in hb)
    diff = np.abs(
        head.image[y0:y1, x0:x1].astype(int) - tail.image[y0:y1, x0:x1].astype(int)
    ).mean()
    assert diff > 20


def test_an_end_hidden_behind_another_locomotive_gets_no_label(
    facility: FacilityConfig, renderer: Renderer
) -> None:
    # From the south wall, a locomotive on T1 hides T2 behind it.
    t2_alone = [_one_loco(18.0, track="T2")]
    both = [*t2_alone, {**_one_loco(30.0, track="T1", model="TE33A"), "id": "FRONT"}]
    alone = renderer.render(
        Simulation(facility, scenario(locomotives=t2_alone), 1).state(0), "cam-s2"
    )
    hidden = renderer.render(Simulation(facility, scenario(locomotives=both), 1).state(0), "cam-s2")
    assert [lb.cls for lb in alone.labels if lb.locomotive_id == "L1" and lb.cls == "head"]
    assert not [lb for lb in hidden.labels if lb.locomotive_id == "L1" and lb.cls == "head"]


def test_plate_is_labelled_on_the_side_facing_the_camera(
    facility: FacilityConfig, renderer: Renderer
) -> None:
    sim = Simulation(facility, scenario(locomotives=[_one_loco(16.0)]), seed=1)
    south = renderer.render(sim.state(0), "cam-s2")
    plates = [lb for lb in south.labels if lb.cls == "plate"]
    assert len(plates) == 1
    assert re.fullmatch(r"TEM2-\d{4}", plates[0].plate)
    x0, y0, x1, y1 = plates[0].box
    assert x1 - x0 > 100  # readable: >= ~100 px wide at 1280x720
    # Light panel with dark text: bright background, some dark pixels.
    crop = south.image[int(y0) : int(y1), int(x0) : int(x1)].mean(axis=2)
    assert np.median(crop) > 150
    assert (crop < 80).mean() > 0.05


def test_light_level_and_noise_change_the_image_not_the_labels(
    facility: FacilityConfig, renderer: Renderer
) -> None:
    bright = scenario(locomotives=[_one_loco(20.0)])
    dim = scenario(
        locomotives=[_one_loco(20.0)], lighting=[{"at_s": 0, "level": 0.5}], noise_sigma=4
    )
    a = renderer.render(Simulation(facility, bright, 1).state(0), "cam-s2")
    b = renderer.render(Simulation(facility, dim, 1).state(0), "cam-s2")
    assert a.labels == b.labels
    assert b.image.mean() < a.image.mean() * 0.6
