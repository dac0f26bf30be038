"""Prometheus ``/metrics``, ``/healthz`` and ``/livez`` endpoints for every service.

Health is a set of named checks; ``/healthz`` answers 200 with their results when all pass and
503 naming the failing ones otherwise (readiness, dashboards, alerts). ``/livez`` answers the
same way for the checks a restart can fix only (liveness: ``depotwatch up`` and Kubernetes
restart on it). A check added with ``restart=False`` reports a state a restart makes worse,
e.g. a worker that makes progress but is behind on a saturated machine.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

HealthCheck = Callable[[], tuple[bool, str]]
"""Returns (healthy, detail)."""


@dataclass
class Health:
    """Named health checks a service registers; evaluated on each /healthz request."""

    checks: dict[str, HealthCheck] = field(default_factory=dict)
    report_only: set[str] = field(default_factory=set)
    """Checks left out of :meth:`evaluate` ``(live=True)``: a restart does not fix them."""

    def add(self, name: str, check: HealthCheck, restart: bool = True) -> None:
        """Register or replace a check; ``restart=False``: it fails /healthz, not /livez."""
        self.checks[name] = check
        if restart:
            self.report_only.discard(name)
        else:
            self.report_only.add(name)

    def evaluate(self, live: bool = False) -> tuple[bool, dict[str, dict[str, object]]]:
        """Run every check (``live``: only those a restart can fix); a check that raises
        counts as failing."""
        results: dict[str, dict[str, object]] = {}
        healthy = True
        for name, check in list(self.checks.items()):
            if live and name in self.report_only:
                continue
            try:
                ok, detail = check()
            except Exception as exc:
                ok, detail = False, f"check raised {type(exc).__name__}: {exc}"
            results[name] = {"ok": ok, "detail": detail}
            healthy = healthy and ok
        return healthy, results


Backlog = Callable[[], int | None]
"""Messages waiting for a service (consumer-group lag); None when it cannot be measured."""


def with_grace(
    check: HealthCheck, grace_s: float, clock: Callable[[], float] = time.monotonic
) -> HealthCheck:
    """A check that fails only once ``check`` has failed continuously for ``grace_s``
    (a dependency restarting for a few seconds is not an outage)."""
    failing_since: list[float | None] = [None]

    def graced() -> tuple[bool, str]:
        try:
            ok, detail = check()
        except Exception as exc:
            ok, detail = False, f"check raised {type(exc).__name__}: {exc}"
        if ok:
            failing_since[0] = None
            return True, detail
        now = clock()
        since = failing_since[0] if failing_since[0] is not None else now
        failing_since[0] = since
        down = now - since
        return down < grace_s, f"{detail} (failing for {down:.0f}s, limit {grace_s:.0f}s)"

    return graced


class ProgressWatch:
    """Health that fails when a service has work and makes no progress.

    ``done`` counts the items the service has finished (any monotonic counter); each check
    notes when it last grew. :meth:`check` fails when the backlog is above zero and nothing
    was finished for ``stall_after_s`` (a stuck consumer: its loop may still come round, so
    "the loop is alive" is not enough), and when the backlog could not be measured for
    ``unreachable_after_s`` (the broker is gone). ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        done: Callable[[], int],
        backlog: Backlog,
        stall_after_s: float = 60.0,
        unreachable_after_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._done = done
        self._backlog = backlog
        self.stall_after_s = stall_after_s
        self.unreachable_after_s = unreachable_after_s
        self._clock = clock
        self._seen = done()
        self.last_progress = clock()
        self._last_measured = clock()

    def check(self) -> tuple[bool, str]:
        """(healthy, detail)."""
        now = self._clock()
        finished = self._done()
        if finished != self._seen:
            self._seen, self.last_progress = finished, now
        idle = now - self.last_progress
        backlog = self._backlog()
        if backlog is None:
            unknown = now - self._last_measured
            ok = unknown < self.unreachable_after_s
            return ok, (
                f"backlog unknown for {unknown:.0f}s (broker unreachable?); "
                f"{finished} done, last {idle:.0f}s ago"
            )
        self._last_measured = now
        if backlog > 0 and idle >= self.stall_after_s:
            return False, (
                f"stalled: {backlog} waiting and nothing done for {idle:.0f}s "
                f"(limit {self.stall_after_s:.0f}s); {finished} done"
            )
        return True, f"{backlog} waiting; {finished} done, last {idle:.0f}s ago"


def behind_check(
    newest: datetime | None, backlog: int | None, now: datetime, behind_after_s: float
) -> tuple[bool, str]:
    """Health that fails when a service keeps up in name only: it makes progress, but the
    newest frame it has handled is older than ``behind_after_s`` while work waits.

    Field failure (60-minute soak): the state estimator fused estimates 10 minutes old, 4,000
    waiting, and /healthz said ok because it was never idle and its heartbeats kept its output
    topic busy. With nothing waiting, old data is the cameras' silence, not this service's fault.
    """
    if newest is None:
        return True, "nothing handled yet"
    age = (now - newest).total_seconds()
    waiting = backlog or 0
    if waiting > 0 and age > behind_after_s:
        return False, (
            f"behind: the newest frame handled is {age:.0f}s old while {waiting} wait "
            f"(limit {behind_after_s:.0f}s)"
        )
    return True, f"newest frame handled {age:.0f}s ago; {waiting} waiting"


class ObservabilityServer:
    """Serves /metrics, /healthz and /livez on a background thread."""

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
                elif path in ("/healthz", "/livez"):
                    ok, results = outer.health.evaluate(live=path == "/livez")
                    body = json.dumps({"ok": ok, "checks": results}).encode()
                    self._send(200 if ok else 503, "application/json", body)
                else:
                    self._send(404, "text/plain", b"try /metrics, /healthz or /livez\n")

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
