"""Stand-in for a depotwatch service in supervisor tests.

Serves a counter on /metrics at DEPOTWATCH_HTTP_PORT, starts a grandchild (``sleep``) in its
process group so the test can check that stopping leaves nothing behind, and writes its pid
and grandchild pid to FAKE_PID_DIR/<name>.pids.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from prometheus_client import Counter, start_http_server


def main() -> None:
    name = sys.argv[1]
    frames = Counter("depotwatch_capture_frames_out_total", "fake", ["camera_id"])
    port = int(os.environ.get("DEPOTWATCH_HTTP_PORT", "0"))
    if port:
        start_http_server(port, addr="127.0.0.1")
    # A grandchild that ignores SIGTERM: only a kill of the whole process group ends it.
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)",
        ]
    )
    pid_dir = Path(os.environ["FAKE_PID_DIR"])
    (pid_dir / f"{name.replace('/', '-')}.pids").write_text(f"{os.getpid()} {child.pid}\n")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.1):
        frames.labels(name).inc()


if __name__ == "__main__":
    main()
