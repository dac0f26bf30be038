"""A Python frame source: the simulator's camera frames and ground truth, tick by tick.

No GStreamer, no Kafka: tests and tools that only need frames iterate a :class:`FrameSource`.
``depotwatch sim serve`` and ``depotwatch sim render`` are thin adapters around it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from schemas.facility import FacilityConfig
from schemas.ground_truth import GroundTruth
from services.simulator.render import Image, ObjectLabel, RenderedFrame, Renderer
from services.simulator.world import Scenario, Simulation, WorldState


@dataclass(frozen=True)
class SimTick:
    """One simulator tick: ground truth and the frames of the cameras due at this tick.

    Cameras that the scenario has dropped out are listed in ``ground_truth.cameras_down`` and
    have no frame.
    """

    state: WorldState
    ground_truth: GroundTruth
    frames: dict[str, RenderedFrame]


def due(camera_fps: float, tick: int, tick_s: float) -> bool:
    """Whether a camera with ``camera_fps`` takes a frame at ``tick`` of a clock ticking every
    ``tick_s`` (its own clock advanced since the tick before)."""
    if tick == 0:
        return True
    t, prev = tick * tick_s, (tick - 1) * tick_s
    return int(t * camera_fps + 1e-9) != int(prev * camera_fps + 1e-9)


class FrameSource:
    """Frames of every simulated camera, at each camera's own fps.

    The tick length is the shortest camera frame interval; a camera with a lower fps gets a
    frame only on the ticks where its own clock advances. Clean images of static scenes are
    reused (only light and noise are re-applied), so parked locomotives cost little.
    """

    def __init__(
        self,
        facility: FacilityConfig,
        scenario: Scenario,
        seed: int,
        cameras: list[str] | None = None,
        renderer: Renderer | None = None,
    ) -> None:
        posed = [c for c in facility.enabled_cameras if c.pose is not None]
        if cameras:
            unknown = sorted(set(cameras) - {c.id for c in posed})
            if unknown:
                raise ValueError(
                    f"cameras {unknown} are not enabled simulated cameras (with a pose) in the "
                    f"facility config; use some of {[c.id for c in posed]}"
                )
            posed = [c for c in posed if c.id in cameras]
        else:
            # Browser cameras stream from a page; render them only when asked for by id.
            posed = [c for c in posed if not c.webrtc]
        if not posed:
            raise ValueError("no enabled camera has a pose; the simulator has nothing to render")
        self.cameras = posed
        self.tick_s = 1.0 / max(c.fps for c in posed)
        self.simulation = Simulation(facility, scenario, seed, tick_s=self.tick_s)
        self.renderer = renderer or Renderer(facility, [c.id for c in posed])
        self._cache: dict[str, tuple[tuple[object, ...], Image, tuple[ObjectLabel, ...]]] = {}

    @property
    def ticks(self) -> int:
        """Number of ticks in the scenario."""
        return self.simulation.ticks

    def due(self, camera_fps: float, tick: int) -> bool:
        """Whether a camera with ``camera_fps`` takes a frame at ``tick``."""
        return due(camera_fps, tick, self.tick_s)

    def frame(self, state: WorldState, camera_id: str) -> RenderedFrame:
        """One camera's frame at a state (cached clean image when the scene did not change)."""
        key = self.renderer.scene_key(state, camera_id)
        cached = self._cache.get(camera_id)
        if cached is not None and cached[0] == key:
            clean, labels = cached[1], cached[2]
        else:
            clean, labels = self.renderer.render_clean(state, camera_id)
            self._cache[camera_id] = (key, clean, labels)
        image = self.renderer.finish(clean, state, camera_id)
        return RenderedFrame(camera_id=camera_id, tick=state.tick, image=image, labels=labels)

    def tick(self, tick: int) -> SimTick:
        """Ground truth and due frames at ``tick``."""
        state = self.simulation.state(tick)
        truth = self.simulation.ground_truth(state)
        frames = {
            cam.id: self.frame(state, cam.id)
            for cam in self.cameras
            if cam.id not in state.cameras_down and self.due(cam.fps, tick)
        }
        return SimTick(state=state, ground_truth=truth, frames=frames)

    def __iter__(self) -> Iterator[SimTick]:
        for tick in range(self.ticks):
            yield self.tick(tick)
