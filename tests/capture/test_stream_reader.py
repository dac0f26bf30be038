"""The stream reader takes every frame off a stream but converts only the ones asked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services.capture.stream import StreamReader
from services.simulator.clips import write_h264


def test_grab_moves_through_the_stream_and_retrieve_returns_the_frame_grabbed_last(
    tmp_path: Path,
) -> None:
    frames = []
    for i in range(12):
        image = np.zeros((96, 160, 3), np.uint8)
        image[:, : 8 * (i + 1)] = 255  # frame i: a bar 8 * (i + 1) pixels wide
        frames.append(image)
    path = tmp_path / "bars.mp4"
    write_h264(frames, path, fps=30)
    reader = StreamReader(path.as_uri(), open_timeout_s=5, read_timeout_s=5, loop_files=False)
    reader.open()
    try:
        shown = []
        for i in range(12):
            assert reader.grab()
            if i % 4 == 3:  # keep one frame in four, as capture keeps a camera's fps
                image = reader.retrieve()
                assert image is not None
                shown.append(round(int((image[48, :, 1] > 128).sum()) / 8) - 1)
        assert shown == [3, 7, 11]
        assert not reader.grab()  # the end of a file that does not loop
    finally:
        reader.close()
    assert reader.retrieve() is None
