"""/healthz and /metrics of ObservabilityServer, with plain checks and a private registry."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from services.runtime.observability import Health, ObservabilityServer


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


@pytest.fixture
def registry() -> CollectorRegistry:
    """A registry of this test only, so metrics of other tests do not leak in."""
    return CollectorRegistry()


@pytest.fixture
def served(registry: CollectorRegistry) -> Iterator[tuple[ObservabilityServer, Health]]:
    """A running server on a free port, stopped afterwards."""
    health = Health()
    server = ObservabilityServer(health, port=0, registry=registry).start()
    yield server, health
    server.stop()


def test_healthz_is_200_when_every_check_passes(
    served: tuple[ObservabilityServer, Health],
) -> None:
    server, health = served
    health.add("kafka", lambda: (True, "connected"))
    health.add("s3", lambda: (True, "bucket present"))
    status, ctype, body = _get(server.url + "/healthz")
    assert (status, ctype) == (200, "application/json")
    assert json.loads(body) == {
        "ok": True,
        "checks": {
            "kafka": {"ok": True, "detail": "connected"},
            "s3": {"ok": True, "detail": "bucket present"},
        },
    }


def test_healthz_is_503_naming_the_failing_check(
    served: tuple[ObservabilityServer, Health],
) -> None:
    server, health = served
    health.add("kafka", lambda: (True, "connected"))
    health.add("s3", lambda: (False, "bucket missing"))
    status, _, body = _get(server.url + "/healthz")
    doc = json.loads(body)
    assert status == 503
    assert doc["ok"] is False
    assert doc["checks"]["s3"] == {"ok": False, "detail": "bucket missing"}
    assert doc["checks"]["kafka"]["ok"] is True


def test_a_check_that_raises_counts_as_failing() -> None:
    def broken() -> tuple[bool, str]:
        raise ConnectionError("refused")

    health = Health()
    health.add("broker", broken)
    ok, results = health.evaluate()
    assert not ok
    assert results["broker"] == {"ok": False, "detail": "check raised ConnectionError: refused"}


def test_no_checks_means_healthy() -> None:
    assert Health().evaluate() == (True, {})


def test_metrics_serves_the_registry(
    served: tuple[ObservabilityServer, Health], registry: CollectorRegistry
) -> None:
    server, _ = served
    frames = Counter("test_frames", "Frames seen", ["camera_id"], registry=registry)
    frames.labels("cam-s1").inc(3)
    status, ctype, body = _get(server.url + "/metrics")
    assert status == 200
    assert ctype.startswith("text/plain")
    assert 'test_frames_total{camera_id="cam-s1"} 3.0' in body.decode()


def test_unknown_path_is_404(served: tuple[ObservabilityServer, Health]) -> None:
    server, _ = served
    status, _, body = _get(server.url + "/nope")
    assert status == 404
    assert b"/metrics" in body


def test_port_taken_names_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=rf"127\.0\.0\.1:{port}.*DEPOTWATCH_HTTP_PORT"):
            ObservabilityServer(Health(), port=port)


def test_stop_releases_the_port(registry: CollectorRegistry) -> None:
    server = ObservabilityServer(Health(), port=0, registry=registry).start()
    port = server.port
    server.stop()
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))


def test_behind_fails_when_work_waits_and_the_newest_frame_handled_is_old() -> None:
    """Field failure (60-minute soak): 10 minutes behind, 4,000 waiting, and /healthz said ok."""
    from datetime import UTC, datetime, timedelta

    from services.runtime.observability import behind_check

    now = datetime(2026, 12, 2, 5, 0, tzinfo=UTC)
    old = now - timedelta(minutes=10)
    ok, detail = behind_check(old, 3964, now, behind_after_s=60)
    assert not ok
    assert detail.startswith("behind: the newest frame handled is 600s old while 3964 wait")
    assert behind_check(old, 0, now, 60)[0]  # nothing waits: the cameras are quiet, not us
    assert behind_check(now - timedelta(seconds=59), 3964, now, 60)[0]  # keeping up
    assert behind_check(None, 10, now, 60) == (True, "nothing handled yet")
    assert behind_check(old, None, now, 60)[0]  # backlog unknown: the progress check says so
