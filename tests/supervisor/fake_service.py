"""Stand-in for a depotwatch service in supervisor tests.

Serves a counter on /metrics and a /healthz at DEPOTWATCH_HTTP_PORT (503, with a failing
"stuck" check, while FAKE_PID_DIR/<name>.unhealthy exists: alive but stuck), starts a
grandchild (``sleep``) in its process group so the test can check that stopping leaves nothing
behind, and writes its pid and grandchild pid to FAKE_PID_DIR/<name>.pids.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest


def serve(port: int, unhealthy: Path) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                code, body, kind = 200, generate_latest(), CONTENT_TYPE_LATEST
            elif self.path == "/healthz":
                ok = not unhealthy.exists()
                checks = {"stuck": {"ok": ok, "detail": "ok" if ok else "nothing done for 99s"}}
                code = 200 if ok else 503
                body = json.dumps({"ok": ok, "checks": checks}).encode()
                kind = "application/json"
            else:
                code, body, kind = 404, b"", "text/plain"
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def main() -> None:
    name = sys.argv[1]
    frames = Counter("depotwatch_capture_frames_out_total", "fake", ["camera_id"])
    port = int(os.environ.get("DEPOTWATCH_HTTP_PORT", "0"))
    pid_dir = Path(os.environ["FAKE_PID_DIR"])
    if port:
        serve(port, pid_dir / f"{name.replace('/', '-')}.unhealthy")
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
