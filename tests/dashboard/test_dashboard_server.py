"""The dashboard's HTTP side without Kafka: token, SSE, frames, metrics, config reload."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import yaml
from aiohttp.test_utils import TestClient, TestServer
from dashboard_builders import REPO, facility, frame, loco, state, true_loco, truth
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from services.dashboard.config import DashboardSettings
from services.dashboard.server import DashboardServer, coalesce

JPEG = b"\xff\xd8\xff\xe0fake-jpeg"


def _run(
    test: Callable[[TestClient, DashboardServer], Awaitable[None]],
    token: str | None = None,
    config_path: Path | None = None,
) -> None:
    loads: list[tuple[str, str]] = []

    def loader(bucket: str, key: str) -> bytes:
        loads.append((bucket, key))
        return JPEG

    settings = DashboardSettings(token=SecretStr(token) if token else None)
    server = DashboardServer(
        facility(), settings, loader, config_path=config_path, registry=CollectorRegistry()
    )

    async def main() -> None:
        async with TestClient(TestServer(server.app())) as client:
            await test(client, server)

    try:
        asyncio.run(main())
    finally:
        server.close()


def test_page_and_static_files_are_served() -> None:
    async def check(client: TestClient, server: DashboardServer) -> None:
        page = await client.get("/")
        assert page.status == 200
        assert "static/app.js" in await page.text()
        js = await client.get("/static/app.js")
        assert js.headers["Content-Type"].startswith("application/javascript")
        assert (await client.get("/static/../server.py")).status == 404

    _run(check)


def test_token_by_query_sets_cookie_and_redirects() -> None:
    async def check(client: TestClient, server: DashboardServer) -> None:
        assert (await client.get("/api/snapshot")).status == 401
        assert (
            await client.get("/api/snapshot", headers={"Authorization": "Bearer nope"})
        ).status == 401
        ok = await client.get("/api/snapshot", headers={"Authorization": "Bearer tok-1"})
        assert ok.status == 200
        first = await client.get("/?token=tok-1", allow_redirects=False)
        assert first.status == 302
        assert first.headers["Location"] == "/"
        # The cookie now opens everything, the event stream included.
        assert (await client.get("/api/snapshot")).status == 200
        assert (await client.get("/healthz")).status == 200

    _run(check, token="tok-1")


def test_events_start_with_a_snapshot_then_push_changes() -> None:
    async def check(client: TestClient, server: DashboardServer) -> None:
        server.apply(state("prod", T1=[loco("a", 20, 3)]))
        resp = await client.get("/events")
        assert resp.headers["Content-Type"] == "text/event-stream"

        async def next_event() -> tuple[str, dict[str, object]]:
            lines = []
            while True:
                line = (await asyncio.wait_for(resp.content.readline(), 5)).decode().rstrip("\n")
                if not line:
                    break
                lines.append(line)
            kind = lines[0].removeprefix("event: ")
            return kind, json.loads(lines[1].removeprefix("data: "))

        kind, data = await next_event()
        assert kind == "snapshot"
        assert len(data["states"]["prod"]["locomotives"]) == 1  # type: ignore[index]
        server.apply(state("prod", at_s=1, T1=[loco("a", 20, 3)], T2=[loco("b", 40, 22)]))
        kind, data = await next_event()
        assert kind == "state"
        assert len(data["locomotives"]) == 2  # type: ignore[arg-type]
        resp.close()

    _run(check)


def test_frame_tile_comes_from_the_object_store() -> None:
    async def check(client: TestClient, server: DashboardServer) -> None:
        assert (await client.get("/frames/cam-s1.jpg")).status == 404
        server.apply(frame("cam-s1", 3))
        for _ in range(2):
            resp = await client.get("/frames/cam-s1.jpg")
            assert resp.status == 200
            assert await resp.read() == JPEG

    _run(check)


def test_metrics_describe_the_facility() -> None:
    async def check(client: TestClient, server: DashboardServer) -> None:
        server.apply(state("prod", T1=[loco("a", 20, 3.03)]))
        server.apply(state("dev", T1=[loco("a", 20, 3.03)], T2=[loco("b", 40, 22)]))
        server.apply(truth(true_loco("t", "T1", 20, 3.03, "TEM2-0001", "TEM2")))
        text = await (await client.get("/metrics")).text()
        assert 'depotwatch_facility_locomotives{flow="dev",track="T2"} 1.0' in text
        assert 'depotwatch_facility_locomotives{flow="prod",track="T2"} 0.0' in text
        assert 'depotwatch_facility_camera_ok{camera="cam-n4",flow="prod"} 0.0' in text
        assert 'depotwatch_flow_agreement_ratio{flow_a="prod",flow_b="dev"} 0.5' in text
        assert 'depotwatch_accuracy_detected_ratio{flow="prod"} 1.0' in text

    _run(check)


def test_config_edit_is_pushed_and_a_broken_one_kept_out(tmp_path: Path) -> None:
    path = tmp_path / "facility.yaml"
    data = yaml.safe_load((REPO / "facility.yaml").read_text())
    path.write_text(yaml.safe_dump(data))

    async def check(client: TestClient, server: DashboardServer) -> None:
        data["cameras"][0]["enabled"] = False
        path.write_text(yaml.safe_dump(data))
        server.check_config()
        assert not server.state.config.cameras[0].enabled
        path.write_text("facility_id: [unclosed\n")
        server.check_config()
        assert server.state.config.facility_id == "depot-north"

    _run(check, config_path=path)


def test_a_backlog_is_pushed_as_the_newest_event_per_subject() -> None:
    events = [
        {"type": "frame", "data": {"camera_id": "a", "seq": 1}},
        {"type": "state", "data": {"flow": "prod", "n": 1}},
        {"type": "frame", "data": {"camera_id": "b", "seq": 1}},
        {"type": "frame", "data": {"camera_id": "a", "seq": 2}},
        {"type": "state", "data": {"flow": "dev", "n": 1}},
        {"type": "state", "data": {"flow": "prod", "n": 2}},
    ]
    assert coalesce(events) == [events[2], events[3], events[4], events[5]]


def test_apply_batch_keeps_the_state_of_every_message() -> None:
    async def check(client: TestClient, server: DashboardServer) -> None:
        server.apply_batch([frame("cam-s1", s, at_s=s) for s in range(5)] + [frame("cam-s2", 1)])
        assert server.state.frames["cam-s1"].seq == 4
        assert server.messages == 6

    _run(check)
