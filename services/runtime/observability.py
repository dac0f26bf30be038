"""Prometheus ``/metrics`` and a ``/healthz`` endpoint for every service.

Health is a set of named checks; ``/healthz`` answers 200 with their results when all pass and
503 naming the failing ones otherwise.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

HealthCheck = Callable[[], tuple[bool, str]]
"""Returns (healthy, detail)."""


@dataclass
class Health:
    """Named health checks a service registers; evaluated on each /healthz request."""

    checks: dict[str, HealthCheck] = field(default_factory=dict)

    def add(self, name: str, check: HealthCheck) -> None:
        """Register or replace a check."""
        self.checks[name] = check

    def evaluate(self) -> tuple[bool, dict[str, dict[str, object]]]:
        """Run every check; a check that raises counts as failing."""
        results: dict[str, dict[str, object]] = {}
        healthy = True
        for name, check in list(self.checks.items()):
            try:
                ok, detail = check()
            except Exception as exc:
                ok, detail = False, f"check raised {type(exc).__name__}: {exc}"
            results[name] = {"ok": ok, "detail": detail}
            healthy = healthy and ok
        return healthy, results


class ObservabilityServer:
    """Serves /metrics and /healthz on a background thread."""

    def __init__(
        self,
        health: Health,
        host: str = "127.0.0.1",
        port: int = 0,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.health = health
        self.registry = registry
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(outer.registry))
                elif path == "/healthz":
                    ok, results = outer.health.evaluate()
                    body = json.dumps({"ok": ok, "checks": results}).encode()
                    self._send(200 if ok else 503, "application/json", body)
                else:
                    self._send(404, "text/plain", b"try /metrics or /healthz\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # scrapes every few seconds would flood the logs

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise OSError(
                f"cannot serve /metrics on {host}:{port} ({exc.strerror}); "
                "set DEPOTWATCH_HTTP_PORT to a free port (0 picks one)"
            ) from None
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        """The bound port (useful when 0 was asked for)."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL of the server."""
        host = self._server.server_address[0]
        if isinstance(host, bytes):  # only for AF_UNIX; typed as a union by typeshed
            host = host.decode()
        return f"http://{host}:{self.port}"

    def start(self) -> ObservabilityServer:
        """Start serving; returns self."""
        self._thread.start()
        log.info("serving /metrics and /healthz", extra={"url": self.url})
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
