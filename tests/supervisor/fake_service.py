"""Stand-in for a depotwatch service in supervisor tests.

Serves a counter on /metrics, /healthz and /livez at DEPOTWATCH_HTTP_PORT (a failing "stuck"
check while FAKE_PID_DIR/<name>.unhealthy exists: alive but stuck; a failing report-only
"behind" check while FAKE_PID_DIR/<name>.behind exists), starts a
grandchild (``sleep``) in its process group so the test can check that stopping leaves nothing
behind, and writes its pid and grandchild pid to FAKE_PID_DIR/<name>.pids.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from prometheus_client import Counter

from services.runtime.observability import Health, ObservabilityServer


def serve(port: int, marker: Path) -> None:
    """The real /metrics, /healthz and /livez server with two checks: "stuck" (a restart can
    fix it) fails while ``marker`` with suffix .unhealthy exists, "behind" (report only) while
    one with suffix .behind does."""

    def check(suffix: str, failing: str) -> tuple[bool, str]:
        ok = not marker.with_suffix(suffix).exists()
        return ok, "ok" if ok else failing

    health = Health()
    health.add("stuck", lambda: check(".unhealthy", "nothing done for 99s"))
    health.add("behind", lambda: check(".behind", "the newest frame handled is 99s old"), False)
    ObservabilityServer(health, "127.0.0.1", port).start()


def main() -> None:
    name = sys.argv[1]
    frames = Counter("depotwatch_capture_frames_out_total", "fake", ["camera_id"])
    port = int(os.environ.get("DEPOTWATCH_HTTP_PORT", "0"))
    pid_dir = Path(os.environ["FAKE_PID_DIR"])
    if port:
        serve(port, pid_dir / f"{name.replace('/', '-')}.unhealthy")  # suffix replaced
    # A grandchild that ignores SIGTERM: only a kill of the whole process group ends it.
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)",
        ]
    )
    (pid_dir / f"{name.replace('/', '-')}.pids").write_text(f"{os.getpid()} {child.pid}\n")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.1):
        frames.labels(name).inc()


if __name__ == "__main__":
    main()
