"""The web application's HTTP side without Kafka, served by uvicorn on a free port: token, SSE,
frames, metrics, config reload."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import yaml
from dashboard_builders import REPO, frame, loco, state, true_loco, truth
from web_harness import JPEG, Client, run

from services.dashboard.server import DashboardServer, coalesce


def test_page_and_static_files_are_served() -> None:
    async def check(client: Client, server: DashboardServer) -> None:
        page = await client.get("/")
        assert page.status_code == 200
        assert "static/app.js" in page.text
        js = await client.get("/static/app.js")
        assert js.headers["Content-Type"].startswith("application/javascript")
        assert (await client.get("/static/server.py")).status_code == 404

    run(check)


def test_token_by_query_sets_cookie_and_redirects() -> None:
    async def check(client: Client, server: DashboardServer) -> None:
        assert (await client.get("/api/snapshot")).status_code == 401
        assert (
            await client.get("/api/snapshot", headers={"Authorization": "Bearer nope"})
        ).status_code == 401
        ok = await client.get("/api/snapshot", headers={"Authorization": "Bearer tok-1"})
        assert ok.status_code == 200
        first = await client.get("/?token=tok-1", follow_redirects=False)
        assert first.status_code == 302
        assert first.headers["Location"] == "/"
        # The cookie now opens everything, the event stream included.
        assert (await client.get("/api/snapshot")).status_code == 200
        assert (await client.get("/healthz")).status_code == 200

    run(check, token="tok-1")


def test_events_start_with_a_snapshot_then_push_changes() -> None:
    async def check(client: Client, server: DashboardServer) -> None:
        server.apply(state("prod", T1=[loco("a", 20, 3)]))
        async with client.stream("GET", "/events") as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            lines = resp.aiter_lines()

            async def next_event() -> tuple[str, dict[str, object]]:
                got = []
                while True:
                    line = await asyncio.wait_for(anext(lines), 5)
                    if not line:
                        break
                    got.append(line)
                kind = got[0].removeprefix("event: ")
                return kind, json.loads(got[1].removeprefix("data: "))

            kind, data = await next_event()
            assert kind == "snapshot"
            assert len(data["states"]["prod"]["locomotives"]) == 1  # type: ignore[index]
            server.apply(state("prod", at_s=1, T1=[loco("a", 20, 3)], T2=[loco("b", 40, 22)]))
            kind, data = await next_event()
            assert kind == "state"
            assert len(data["locomotives"]) == 2  # type: ignore[arg-type]

    run(check)


def test_frame_tile_comes_from_the_object_store() -> None:
    async def check(client: Client, server: DashboardServer) -> None:
        assert (await client.get("/frames/cam-s1.jpg")).status_code == 404
        server.apply(frame("cam-s1", 3))
        for _ in range(2):
            resp = await client.get("/frames/cam-s1.jpg")
            assert resp.status_code == 200
            assert resp.content == JPEG

    run(check)


def test_metrics_describe_the_facility() -> None:
    async def check(client: Client, server: DashboardServer) -> None:
        server.apply(state("prod", T1=[loco("a", 20, 3.03)]))
        server.apply(state("dev", T1=[loco("a", 20, 3.03)], T2=[loco("b", 40, 22)]))
        server.apply(truth(true_loco("t", "T1", 20, 3.03, "TEM2-0001", "TEM2")))
        text = (await client.get("/metrics")).text
        assert 'depotwatch_facility_locomotives{flow="dev",track="T2"} 1.0' in text
        assert 'depotwatch_facility_locomotives{flow="prod",track="T2"} 0.0' in text
        assert 'depotwatch_facility_camera_ok{camera="cam-n4",flow="prod"} 0.0' in text
        assert 'depotwatch_flow_agreement_ratio{flow_a="prod",flow_b="dev"} 0.5' in text
        assert 'depotwatch_accuracy_detected_ratio{flow="prod"} 1.0' in text

    run(check)


def test_config_edit_is_pushed_and_a_broken_one_kept_out(tmp_path: Path) -> None:
    path = tmp_path / "facility.yaml"
    data = yaml.safe_load((REPO / "facility.yaml").read_text())
    path.write_text(yaml.safe_dump(data))

    async def check(client: Client, server: DashboardServer) -> None:
        data["cameras"][0]["enabled"] = False
        path.write_text(yaml.safe_dump(data))
        server.check_config()
        assert not server.state.config.cameras[0].enabled
        path.write_text("facility_id: [unclosed\n")
        server.check_config()
        assert server.state.config.facility_id == "depot-north"

    run(check, config_path=path)


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
    async def check(client: Client, server: DashboardServer) -> None:
        server.apply_batch([frame("cam-s1", s, at_s=s) for s in range(5)] + [frame("cam-s2", 1)])
        assert server.state.frames["cam-s1"].seq == 4
        assert server.messages == 6

    run(check)


def test_connections_to_the_listening_socket_have_nagle_off() -> None:
    # asyncio turns TCP_NODELAY on only for connections of a socket made with IPPROTO_TCP; a
    # socket.create_server() socket (proto 0) left every keep-alive response ~40 ms late.
    import socket

    from services.dashboard.__main__ import _listen

    async def main() -> int:
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        listener = _listen("127.0.0.1", 0)
        server = await asyncio.start_server(connected, sock=listener)
        try:
            port = listener.getsockname()[1]
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            nodelay = await asyncio.wait_for(accepted, 5)
            writer.close()
            return nodelay
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(main()) != 0


def test_a_server_that_fails_to_start_exits_with_an_error_status() -> None:
    from contextlib import asynccontextmanager

    import pytest
    from fastapi import FastAPI

    from services.dashboard.__main__ import serve_app

    @asynccontextmanager
    async def broken(app: FastAPI):  # type: ignore[no-untyped-def]
        raise RuntimeError("startup failed")
        yield

    ready: list[int] = []
    with pytest.raises(SystemExit) as stopped:
        asyncio.run(serve_app(FastAPI(lifespan=broken), "127.0.0.1", 0, ready.append))
    assert stopped.value.code == 3
    assert ready == []
