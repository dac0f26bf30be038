"""Camera clips for capture: H.264 with a keyframe every 2 s, rendered once per content."""

from __future__ import annotations

from pathlib import Path

import av
import pytest
from click.testing import CliRunner

from schemas.facility import FacilityConfig
from services.cli import cli
from services.simulator.clips import cached_clip, clip_key, write_h264
from services.simulator.world import load_scenario
from tests.simulator.scenes import REPO

SIZE = (160, 90)


def keyframes(path: Path) -> tuple[int, list[int]]:
    """(frames, indices of the keyframes) of a clip, decoded with PyAV."""
    with av.open(str(path)) as container:
        flags = [f.key_frame for f in container.decode(video=0)]
    return len(flags), [i for i, k in enumerate(flags) if k]


def test_a_clip_is_h264_with_a_keyframe_every_two_seconds(tmp_path: Path) -> None:
    import numpy as np

    frames = [np.full((90, 160, 3), i * 4, np.uint8) for i in range(50)]
    path = tmp_path / "c.mp4"
    assert write_h264(frames, path, fps=10) == 50
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.width, stream.height) == SIZE
    assert keyframes(path) == (50, [0, 20, 40])
    with pytest.raises(ValueError, match="even frame size"):
        write_h264([np.zeros((91, 160, 3), np.uint8)], tmp_path / "odd.mp4", fps=10)


def test_a_clip_is_rendered_once_and_found_again_by_what_it_shows(
    facility: FacilityConfig, tmp_path: Path
) -> None:
    scenario = load_scenario("depot-day")
    path, rendered = cached_clip(facility, scenario, 1, "cam-s1", 0.5, 10, SIZE, tmp_path)
    assert rendered
    assert keyframes(path)[0] == 5
    again, rendered = cached_clip(facility, scenario, 1, "cam-s1", 0.5, 10, SIZE, tmp_path)
    assert (again, rendered) == (path, False)
    other = clip_key(facility, scenario, 2, "cam-s1", 0.5, 10, SIZE)
    assert other != clip_key(facility, scenario, 1, "cam-s1", 0.5, 10, SIZE)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no partial file left


def test_sim_clip_writes_mp4_or_y4m_and_refuses_other_formats(tmp_path: Path) -> None:
    base = ["sim", "clip", "--config", str(REPO / "facility.yaml"), "--camera", "cam-s1"]
    args = [*base, "--seconds", "0.3", "--fps", "10", "--size", "160x90"]
    ok = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "v.mp4")])
    assert ok.exit_code == 0, ok.output
    assert keyframes(tmp_path / "v.mp4")[0] == 3
    bad = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "v.avi")])
    assert bad.exit_code == 2
    assert "write a .y4m or .mp4 file" in bad.output


def test_a_clip_can_start_later_in_the_scenario(facility: FacilityConfig) -> None:
    import numpy as np

    from services.simulator.y4m import clip_frames

    scenario = load_scenario("depot-day")  # a locomotive drives in from 20 s
    whole = list(clip_frames(facility, scenario, 1, "cam-s1", 23.0, 1, SIZE))
    later = list(clip_frames(facility, scenario, 1, "cam-s1", 3.0, 1, SIZE, start_s=20.0))
    assert len(later) == 3
    for a, b in zip(whole[20:], later, strict=True):
        assert np.array_equal(a, b)
    key = clip_key(facility, scenario, 1, "cam-s1", 3.0, 1, SIZE)
    assert clip_key(facility, scenario, 1, "cam-s1", 3.0, 1, SIZE, start_s=20.0) != key
    with pytest.raises(ValueError, match="outside the scenario"):
        next(iter(clip_frames(facility, scenario, 1, "cam-s1", 3.0, 1, SIZE, start_s=9999)))


def test_a_palindrome_clip_plays_forward_then_back_and_loops_without_a_jump(
    facility: FacilityConfig, tmp_path: Path
) -> None:
    import numpy as np

    from services.simulator.y4m import clip_frames, clip_offsets

    assert clip_offsets(4) == [0, 1, 2, 3]
    assert clip_offsets(4, palindrome=True) == [0, 1, 2, 3, 2, 1]  # then 0 again: no jump
    assert clip_offsets(1, palindrome=True) == [0]
    scenario = load_scenario("depot-day")
    forward = list(clip_frames(facility, scenario, 1, "cam-s1", 4.0, 1, SIZE, start_s=20.0))
    both = list(
        clip_frames(facility, scenario, 1, "cam-s1", 4.0, 1, SIZE, start_s=20.0, palindrome=True)
    )
    assert len(both) == 6
    for shown, tick in zip(both, clip_offsets(4, palindrome=True), strict=True):
        assert np.array_equal(shown, forward[tick])
    assert clip_key(facility, scenario, 1, "cam-s1", 4.0, 1, SIZE, 20.0, True) != clip_key(
        facility, scenario, 1, "cam-s1", 4.0, 1, SIZE, 20.0
    )
    path, _ = cached_clip(facility, scenario, 1, "cam-s1", 4.0, 1, SIZE, tmp_path, 20.0, True)
    assert keyframes(path)[0] == 6
