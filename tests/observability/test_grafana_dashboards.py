"""Grafana dashboards in grafana/: structure, metric names the code exports, provisioning."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from services.dashboard.grafana import DATASOURCE_UID, grafana, load_dashboards

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "grafana"
METRIC = re.compile(r"\bdepotwatch_[a-z0-9_]+")
DEFINED = re.compile(
    r"(?:Counter|Gauge|Histogram|Summary|GaugeMetricFamily|CounterMetricFamily)\(\s*\"(depotwatch_[a-z0-9_]+)\""
)


def exported_metric_names() -> set[str]:
    """Every metric name defined in services/, with the series names Prometheus sees."""
    names: set[str] = set()
    for path in (REPO / "services").rglob("*.py"):
        for name in DEFINED.findall(path.read_text()):
            base = name.removesuffix("_total")
            names |= {name, base, f"{base}_total", f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def _exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for var in dashboard.get("templating", {}).get("list", []):
        if isinstance(var.get("query"), str):
            yield f"variable {var['name']}", var["query"]


def test_the_four_dashboards_exist() -> None:
    titles = {d["title"] for d in load_dashboards(GRAFANA)}
    assert titles == {
        "depotwatch · facility state",
        "depotwatch · cameras",
        "depotwatch · pipeline lag",
        "depotwatch · dev vs prod",
    }


@pytest.mark.parametrize("path", sorted(GRAFANA.glob("*.json")), ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    dash = json.loads(path.read_text())
    assert re.fullmatch(r"depotwatch-[a-z-]+", dash["uid"])
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        pos = panel["gridPos"]
        assert pos["x"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for t in panel["targets"]:
            assert t["datasource"]["uid"] == DATASOURCE_UID


@pytest.mark.parametrize("path", sorted(GRAFANA.glob("*.json")), ids=lambda p: p.name)
def test_every_query_uses_metrics_the_code_exports(path: Path) -> None:
    known = exported_metric_names()
    assert "depotwatch_consumer_lag_messages" in known  # the grep itself works
    dash = json.loads(path.read_text())
    for title, expr in _exprs(dash):
        used = METRIC.findall(expr)
        assert used, f"{path.name}: {title}: query names no depotwatch metric: {expr}"
        unknown = sorted(set(used) - known)
        assert not unknown, f"{path.name}: {title}: no such metric in services/: {unknown}"
        assert expr.count("(") == expr.count(")"), f"{path.name}: {title}: unbalanced {expr}"


class FakeGrafana:
    """Records requests and answers like Grafana's HTTP API for the calls provisioning makes."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, Any] | None, str]] = []
        self.datasources: dict[str, dict[str, Any]] = {}
        self.folders: set[str] = set()
        self.dashboards: dict[str, dict[str, Any]] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict[str, Any] | None:
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n)) if n else None

            def _handle(self, method: str) -> None:
                body = self._body()
                outer.requests.append(
                    (method, self.path, body, self.headers.get("Authorization", ""))
                )
                if self.headers.get("Authorization") != "Bearer glsa_test":
                    return self._reply(401, {"message": "Unauthorized"})
                p = self.path
                if method == "GET" and p.startswith("/api/datasources/uid/"):
                    ds = outer.datasources.get(p.rsplit("/", 1)[1])
                    return (
                        self._reply(200, ds) if ds else self._reply(404, {"message": "not found"})
                    )
                if method in ("POST", "PUT") and p.startswith("/api/datasources"):
                    assert body is not None
                    outer.datasources[body["uid"]] = body
                    return self._reply(200, {"message": "ok", "datasource": body})
                if method == "GET" and p.startswith("/api/folders/"):
                    uid = p.rsplit("/", 1)[1]
                    return (
                        self._reply(200, {"uid": uid})
                        if uid in outer.folders
                        else self._reply(404, {"message": "not found"})
                    )
                if method == "POST" and p == "/api/folders":
                    assert body is not None
                    outer.folders.add(body["uid"])
                    return self._reply(200, body)
                if method == "POST" and p == "/api/dashboards/db":
                    assert body is not None
                    outer.dashboards[body["dashboard"]["uid"]] = body
                    return self._reply(200, {"status": "success", "uid": body["dashboard"]["uid"]})
                return self._reply(404, {"message": f"fake has no {method} {p}"})

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PUT(self) -> None:
                self._handle("PUT")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def fake_grafana() -> Iterator[FakeGrafana]:
    fake = FakeGrafana()
    fake.thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()


def test_provision_installs_datasource_and_dashboards_idempotently(
    fake_grafana: FakeGrafana,
) -> None:
    args = ["provision", "--url", fake_grafana.url, "--prometheus-url", "http://prom:9090"]
    result = CliRunner().invoke(grafana, args, env={"GRAFANA_TOKEN": "glsa_test"})
    assert result.exit_code == 0, result.output
    assert "datasource depotwatch-prometheus: created" in result.output
    ds = fake_grafana.datasources[DATASOURCE_UID]
    assert ds["type"] == "prometheus"
    assert ds["url"] == "http://prom:9090"
    assert set(fake_grafana.dashboards) == {d["uid"] for d in load_dashboards(GRAFANA)}
    assert all(
        d["folderUid"] == "depotwatch" and d["overwrite"] for d in fake_grafana.dashboards.values()
    )
    # Second run: updates in place, no duplicate folder.
    result = CliRunner().invoke(grafana, args, env={"GRAFANA_TOKEN": "glsa_test"})
    assert result.exit_code == 0, result.output
    assert "datasource depotwatch-prometheus: updated" in result.output
    assert sum(1 for m, p, _, _ in fake_grafana.requests if (m, p) == ("POST", "/api/folders")) == 1
    assert any(
        m == "PUT" and p == f"/api/datasources/uid/{DATASOURCE_UID}"
        for m, p, _, _ in fake_grafana.requests
    )


def test_provision_reports_bad_credentials_in_one_line(fake_grafana: FakeGrafana) -> None:
    result = CliRunner().invoke(
        grafana, ["provision", "--url", fake_grafana.url], env={"GRAFANA_TOKEN": "wrong"}
    )
    assert result.exit_code == 1
    assert "Grafana answered 401" in result.output
    assert "--token" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_provision_without_credentials_says_how(fake_grafana: FakeGrafana) -> None:
    result = CliRunner().invoke(grafana, ["provision", "--url", fake_grafana.url], env={})
    assert result.exit_code == 1
    assert "no credentials" in result.output


def test_file_provisioning_points_at_the_same_datasource_and_folder() -> None:
    import yaml

    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/depotwatch.yaml").read_text())
    assert [d["uid"] for d in ds["datasources"]] == [DATASOURCE_UID]
    prov = yaml.safe_load((GRAFANA / "provisioning/dashboards/depotwatch.yaml").read_text())
    assert prov["providers"][0]["folderUid"] == "depotwatch"


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="needs promtool (apt-get install prometheus)"
)
def test_compose_prometheus_config_is_valid() -> None:
    result = subprocess.run(
        ["promtool", "check", "config", str(GRAFANA / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
