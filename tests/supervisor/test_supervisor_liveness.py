"""How the supervisor asks a child whether a restart would help: /livez, else /healthz."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from services.runtime.observability import Health, ObservabilityServer
from services.supervisor.supervisor import _healthz


@pytest.fixture
def healthz_only() -> Iterator[ThreadingHTTPServer]:
    """A child that serves /healthz (503, one failing check) and no /livez, as the dashboard."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/healthz":
                body = json.dumps({"ok": False, "checks": {"feed": {"ok": False, "detail": "x"}}})
                code, data = 503, body.encode()
            else:
                code, data = 404, b""
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_child_without_livez_is_judged_by_its_healthz(healthz_only: ThreadingHTTPServer) -> None:
    assert _healthz(int(healthz_only.server_address[1])) == (False, "feed: x")


def test_a_child_with_livez_is_judged_by_the_checks_a_restart_can_fix() -> None:
    health = Health()
    health.add("progress", lambda: (True, "fine"))
    health.add("behind", lambda: (False, "99 s behind"), restart=False)
    server = ObservabilityServer(health).start()
    try:
        assert _healthz(server.port) == (True, "")  # /healthz would say 503
        health.add("progress", lambda: (False, "stalled"))
        assert _healthz(server.port) == (False, "progress: stalled")
    finally:
        server.stop()
