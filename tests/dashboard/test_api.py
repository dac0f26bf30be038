"""The REST API (/api/v1) served by uvicorn: reads, camera changes, access rules, docs."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from dashboard_builders import REPO, T0, frame, loco, state, true_loco, truth
from web_harness import Client, run

from schemas.api import Agreement, CameraView, FlowView, Rejected, StateHistory
from schemas.facility import load_facility
from schemas.facility_state import FacilityState
from services.dashboard.server import DashboardServer

TOKEN = "api-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET_SOURCE = "rtsp://operator:hunter2@192.0.2.7:554/stream1"


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    """The repository's facility file, first camera behind a password."""
    data = yaml.safe_load((REPO / "facility.yaml").read_text())
    data["cameras"][0]["source"] = SECRET_SOURCE
    path = tmp_path / "facility.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _camera(path: Path, cid: str) -> dict[str, Any]:
    cam = dict(yaml.safe_load(path.read_text())["cameras"][1])
    cam["id"] = cid
    return cam


def test_reads_answer_with_the_schema_models_and_never_show_passwords(config_path: Path) -> None:
    async def check(client: Client, server: DashboardServer) -> None:
        server.apply(frame("cam-s1", 1, at_s=0))
        server.apply(state("prod", at_s=1, T1=[loco("a", 20, 3.03)]))
        server.apply(state("dev", at_s=1, T1=[loco("a", 20, 3.03)], T2=[loco("b", 40, 22)]))
        server.apply(truth(true_loco("t", "T1", 20, 3.03, "TEM2-0001", "TEM2")))

        facility = (await client.get("/api/v1/facility", headers=AUTH)).json()
        assert facility["cameras"][0]["source"] == "rtsp://***@192.0.2.7:554/stream1"
        cams = [CameraView.model_validate(c) for c in (await client.get("/api/v1/cameras")).json()]
        assert [c.camera.id for c in cams] == [c.id for c in server.state.config.cameras]
        assert cams[0].last_frame is not None
        assert cams[0].health["prod"].status == "ok"
        one = await client.get("/api/v1/cameras/cam-s1")
        assert CameraView.model_validate(one.json()).camera.id == "cam-s1"
        missing = await client.get("/api/v1/cameras/cam-zz")
        assert missing.status_code == 404
        assert "GET /api/v1/cameras" in missing.json()["detail"]

        flows = [FlowView.model_validate(f) for f in (await client.get("/api/v1/flows")).json()]
        assert {f.flow: f.locomotives for f in flows} == {"prod": 1, "dev": 2}
        prod = FacilityState.model_validate((await client.get("/api/v1/flows/prod/state")).json())
        assert prod.tracks[0].locomotives[0].locomotive_id == "a"
        assert (await client.get("/api/v1/flows/nope/state")).status_code == 404
        agreement = Agreement.model_validate((await client.get("/api/v1/agreement")).json())
        assert agreement.comparison is not None
        assert agreement.comparison.agreement == 0.5
        assert agreement.accuracy["prod"].detected == 1.0
        text = (await client.get("/api/v1/cameras")).text + str(facility)
        assert "hunter2" not in text

    run(check, config_path=config_path, read_token_required=False, token=TOKEN)


def test_cameras_are_added_changed_disabled_and_removed(config_path: Path) -> None:
    async def check(client: Client, server: DashboardServer) -> None:
        added = await client.post(
            "/api/v1/cameras", json=_camera(config_path, "cam-x1"), headers=AUTH
        )
        assert added.status_code == 201, added.text
        assert CameraView.model_validate(added.json()).camera.id == "cam-x1"
        assert server.state.config.camera("cam-x1").enabled  # picked up at once
        again = await client.post(
            "/api/v1/cameras", json=_camera(config_path, "cam-x1"), headers=AUTH
        )
        assert again.status_code == 409

        off = await client.patch("/api/v1/cameras/cam-x1", json={"enabled": False}, headers=AUTH)
        assert off.status_code == 200
        assert not load_facility(config_path).camera("cam-x1").enabled

        # GET, edit, PUT back: the password shown as *** is kept, not overwritten.
        shown = (await client.get("/api/v1/cameras/cam-s1", headers=AUTH)).json()["camera"]
        shown["fps"] = 1
        put = await client.put("/api/v1/cameras/cam-s1", json=shown, headers=AUTH)
        assert put.status_code == 200, put.text
        assert load_facility(config_path).camera("cam-s1").source == SECRET_SOURCE
        assert load_facility(config_path).camera("cam-s1").fps == 1

        gone = await client.delete("/api/v1/cameras/cam-x1", headers=AUTH)
        assert gone.status_code == 204
        assert "cam-x1" not in {c.id for c in load_facility(config_path).cameras}
        assert (await client.delete("/api/v1/cameras/cam-x1", headers=AUTH)).status_code == 404
        assert len(list(config_path.parent.glob("facility.yaml.*.bak"))) == 4

    run(check, config_path=config_path, token=TOKEN)


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("post", "/api/v1/cameras", {"id": "cam-x2", "source": "ftp://x/y"}, "cameras[8].source"),
        ("post", "/api/v1/cameras", {"id": "cam-x2"}, "cameras[8].source"),
        ("patch", "/api/v1/cameras/cam-s2", {"tracks": ["T9"]}, "cameras[1].tracks"),
        ("patch", "/api/v1/cameras/cam-s2", {"fps": 0}, "cameras[1].fps"),
        ("patch", "/api/v1/cameras/cam-s2", {"id": "cam-s3"}, "id"),
        ("put", "/api/v1/cameras/cam-s2", [1, 2], "body"),
        ("patch", "/api/v1/cameras/cam-s2", {}, "body"),
        (
            "post",
            "/api/v1/cameras",
            {"id": "cam-x2", "source": "rtsp://h:99999/s"},
            "cameras[8].source",
        ),
    ],
)
def test_a_change_that_breaks_the_config_is_a_422_naming_the_field(
    config_path: Path, method: str, path: str, body: object, field: str
) -> None:
    before = config_path.read_text()

    async def check(client: Client, server: DashboardServer) -> None:
        resp = await client.request(method.upper(), path, json=body, headers=AUTH)
        assert resp.status_code == 422, resp.text
        rejected = Rejected.model_validate(resp.json())
        assert field in [p.field for p in rejected.problems], rejected
        assert all(p.problem.startswith(f"{p.field}: ") for p in rejected.problems)

    run(check, config_path=config_path, token=TOKEN)
    assert config_path.read_text() == before
    assert not list(config_path.parent.glob("*.bak"))


def test_changes_need_the_token_as_a_bearer_header(config_path: Path) -> None:
    before = config_path.read_text()
    body = {"enabled": False}

    async def with_token(client: Client, server: DashboardServer) -> None:
        assert (await client.patch("/api/v1/cameras/cam-s2", json=body)).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (
            await client.patch("/api/v1/cameras/cam-s2", json=body, headers=wrong)
        ).status_code == 401
        # The cookie the page gets opens reads, never changes (a page of another site could
        # make the browser send it).
        assert (await client.get(f"/?token={TOKEN}")).status_code == 302
        assert (await client.get("/api/v1/cameras")).status_code == 200
        refused = await client.patch("/api/v1/cameras/cam-s2", json=body)
        assert refused.status_code == 401
        assert "Authorization: Bearer" in refused.json()["detail"]

    async def without_token(client: Client, server: DashboardServer) -> None:
        refused = await client.patch("/api/v1/cameras/cam-s2", json=body)
        assert refused.status_code == 403
        assert "DEPOTWATCH_DASHBOARD_TOKEN" in refused.json()["detail"]
        assert (await client.get("/api/v1/cameras")).status_code == 200

    async def reads_locked(client: Client, server: DashboardServer) -> None:
        locked = await client.get("/api/v1/flows")
        assert locked.status_code == 401
        assert locked.headers["WWW-Authenticate"] == "Bearer"
        assert (await client.get("/api/v1/flows", headers=AUTH)).status_code == 200
        lower = {"Authorization": f"bearer {TOKEN}"}  # the scheme is case-insensitive
        assert (await client.get("/api/v1/flows", headers=lower)).status_code == 200
        bare = {"Authorization": TOKEN}  # no scheme: not a bearer token
        assert (await client.get("/api/v1/flows", headers=bare)).status_code == 401
        assert (await client.get("/healthz")).status_code == 200

    run(with_token, config_path=config_path, token=TOKEN)
    run(without_token, config_path=config_path)
    run(reads_locked, config_path=config_path, token=TOKEN)
    assert config_path.read_text() == before


def test_docs_work_offline_and_cors_is_off_by_default(config_path: Path) -> None:
    async def check(client: Client, server: DashboardServer) -> None:
        docs = await client.get("/api/docs")
        assert docs.status_code == 200
        assert "/api/docs-assets/swagger-ui-bundle.js" in docs.text
        assert "cdn" not in docs.text.lower()
        js = await client.get("/api/docs-assets/swagger-ui-bundle.js")
        assert js.status_code == 200
        doc = (await client.get("/api/openapi.json")).json()
        assert "/api/v1/cameras/{camera_id}" in doc["paths"]
        preflight = await client.options(
            "/api/v1/cameras",
            headers={"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "GET"},
        )
        assert "access-control-allow-origin" not in preflight.headers

    async def cors_on(client: Client, server: DashboardServer) -> None:
        origin = {"Origin": "https://grafana.example"}
        # The browser's preflight carries no token; it is answered before the token gate.
        preflight = await client.options(
            "/api/v1/flows", headers={**origin, "Access-Control-Request-Method": "GET"}
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://grafana.example"
        resp = await client.get("/api/v1/flows", headers={**origin, **AUTH})
        assert resp.headers["access-control-allow-origin"] == "https://grafana.example"

    run(check, config_path=config_path)
    run(cors_on, config_path=config_path, token=TOKEN, cors_origins="https://grafana.example")


def test_state_history_reads_a_range_thinned_and_refuses_bad_ranges(config_path: Path) -> None:
    asked: list[tuple[str, datetime, datetime]] = []
    published = [state("prod", at_s=t / 2, T1=[loco("a", 20, 3)]) for t in range(20)]
    published.append(state("prod", at_s=1, facility_id="another-depot"))

    def reader(flow: str, start: datetime, end: datetime) -> list[FacilityState]:
        asked.append((flow, start, end))
        if flow == "dev":
            raise LookupError("topic facility-state.dev.v1 does not exist")
        return published

    t0 = T0.isoformat()
    t5 = (T0 + timedelta(seconds=5)).isoformat()

    async def check(client: Client, server: DashboardServer) -> None:
        got = await client.get(
            "/api/v1/flows/prod/history", params={"start": t0, "end": t5, "every_s": 2}
        )
        assert got.status_code == 200, got.text
        history = StateHistory.model_validate(got.json())
        assert [(s.as_of - T0).total_seconds() for s in history.states] == [0, 2, 4]
        # Read 5 s past the end by broker time: a state stamped inside reaches it later.
        assert asked == [("prod", T0, T0 + timedelta(seconds=10))]
        bad = {
            "start": (
                {"start": "2026-11-21T12:00:00", "end": t5},
                "query.start: has no time zone",
            ),
            "order": ({"start": t5, "end": t0}, "query.end: is not after start"),
            "long": (
                {"start": t0, "end": (T0 + timedelta(hours=2)).isoformat()},
                "longer than 1 h",
            ),
            "type": ({"start": "yesterday"}, "query.start"),
            "every": ({"start": t0, "every_s": 0}, "query.every_s"),
            "overflow": ({"start": "9999-12-31T22:00:00-05:00"}, "outside the years"),
        }
        for params, words in bad.values():
            resp = await client.get("/api/v1/flows/prod/history", params=params)
            assert resp.status_code == 422, (params, resp.text)
            assert words in resp.text
            Rejected.model_validate(resp.json())
        assert (
            await client.get("/api/v1/flows/nope/history", params={"start": t0})
        ).status_code == 404
        missing = await client.get("/api/v1/flows/dev/history", params={"start": t0, "end": t5})
        assert missing.status_code == 404
        assert "has flow 'dev' published any state" in missing.json()["detail"]

    run(check, config_path=config_path, history_reader=reader)

    async def no_reader(client: Client, server: DashboardServer) -> None:
        resp = await client.get("/api/v1/flows/prod/history", params={"start": t0, "end": t5})
        assert resp.status_code == 503

    run(no_reader, config_path=config_path)


def test_a_body_nested_past_any_camera_is_a_422_not_a_crash(config_path: Path) -> None:
    async def check(client: Client, server: DashboardServer) -> None:
        deep = "[" * 100_000 + "]" * 100_000
        resp = await client.post(
            "/api/v1/cameras",
            content=deep,
            headers={**AUTH, "Content-Type": "application/json"},
        )
        assert resp.status_code == 422
        assert "not a JSON object" in resp.text

    run(check, config_path=config_path, token=TOKEN)
