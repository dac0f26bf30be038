"""Skip marker for tests that run the simulator's RTSP server (GStreamer, system python3)."""

from __future__ import annotations

import subprocess

import pytest

NEEDS_RTSP_SERVER = pytest.mark.skipif(
    subprocess.run(
        ["/usr/bin/python3", "-c", "import gi; gi.require_version('GstRtspServer', '1.0')"],
        capture_output=True,
    ).returncode
    != 0,
    reason="needs GStreamer's RTSP server for the simulator (make setup)",
)
