"""``depotwatch grafana provision``: install the repository's Grafana dashboards and a
Prometheus datasource into a Grafana server, through grafana-client.

The dashboards live as JSON in ``grafana/`` (docker-compose mounts the same files). Every
panel queries the datasource with uid ``depotwatch-prometheus``, which provisioning creates or
updates, so the dashboards work whatever the Prometheus URL is. Re-running is safe: datasource
and dashboards are overwritten in place (matched by uid).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

DATASOURCE_UID = "depotwatch-prometheus"
FOLDER_UID = "depotwatch"
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "grafana"


class ProvisionError(RuntimeError):
    """Provisioning failed; the message names the step and the fix."""


def load_dashboards(directory: Path) -> list[dict[str, Any]]:
    """Every ``*.json`` dashboard in ``directory`` (sorted by file name)."""
    files = sorted(directory.glob("*.json"))
    if not files:
        raise ProvisionError(
            f"no dashboard JSON in {directory}; pass --dir with the grafana/ folder"
        )
    out = []
    for path in files:
        try:
            doc = json.loads(path.read_text())
        except ValueError as exc:
            raise ProvisionError(f"{path}: not valid JSON ({exc}); fix the file") from None
        if not isinstance(doc, dict) or "uid" not in doc or "panels" not in doc:
            raise ProvisionError(f"{path}: not a Grafana dashboard (needs uid and panels)")
        out.append(doc)
    return out


def datasource_payload(prometheus_url: str) -> dict[str, Any]:
    """The Prometheus datasource every dashboard refers to (by uid)."""
    return {
        "uid": DATASOURCE_UID,
        "name": "depotwatch Prometheus",
        "type": "prometheus",
        "access": "proxy",
        "url": prometheus_url,
        "isDefault": False,
        "jsonData": {"httpMethod": "POST", "timeInterval": "5s"},
    }


@dataclass(frozen=True)
class ProvisionReport:
    """What provisioning did."""

    datasource: str
    dashboards: list[str]


def provision(api: Any, dashboards: list[dict[str, Any]], prometheus_url: str) -> ProvisionReport:
    """Create or update the datasource, the folder and every dashboard via a ``GrafanaApi``."""
    from grafana_client.client import GrafanaClientError, GrafanaException

    payload = datasource_payload(prometheus_url)
    try:
        try:
            existing = api.datasource.get_datasource_by_uid(DATASOURCE_UID)
        except GrafanaClientError as exc:
            if getattr(exc, "status_code", None) != 404:
                raise
            existing = None
        if existing:
            api.datasource.update_datasource_by_uid(DATASOURCE_UID, payload)
            ds_state = "updated"
        else:
            api.datasource.create_datasource(payload)
            ds_state = "created"
        try:
            api.folder.get_folder(FOLDER_UID)
        except GrafanaClientError as exc:
            if getattr(exc, "status_code", None) != 404:
                raise
            api.folder.create_folder("depotwatch", uid=FOLDER_UID)
        titles = []
        for dash in dashboards:
            body = {k: v for k, v in dash.items() if k != "id"}
            api.dashboard.update_dashboard(
                {
                    "dashboard": body,
                    "folderUid": FOLDER_UID,
                    "overwrite": True,
                    "message": "provisioned by depotwatch",
                }
            )
            titles.append(str(dash.get("title", dash["uid"])))
    except GrafanaException as exc:
        status = getattr(exc, "status_code", "?")
        hint = "check --token/--user" if status in (401, 403) else "check --url and Grafana's log"
        raise ProvisionError(f"Grafana answered {status}: {exc.message}; {hint}") from None
    except OSError as exc:
        raise ProvisionError(f"cannot reach Grafana ({exc}); check --url") from None
    return ProvisionReport(f"{ds_state} ({prometheus_url})", titles)


def grafana_api(url: str, token: str | None, user: str | None, password: str | None) -> Any:
    """A ``GrafanaApi`` for ``url`` with a service-account token or basic auth."""
    from grafana_client import GrafanaApi

    auth: Any
    if token:
        from grafana_client import TokenAuth

        auth = TokenAuth(token)
    elif user:
        auth = (user, password or "")
    else:
        raise ProvisionError(
            "no credentials: pass --token (or GRAFANA_TOKEN), or --user and GRAFANA_PASSWORD"
        )
    return GrafanaApi.from_url(url, credential=auth, timeout=10.0)


@click.group("grafana")
def grafana() -> None:
    """Grafana dashboards of the pipeline (JSON in grafana/)."""


@grafana.command("provision")
@click.option("--url", required=True, help="Grafana base URL, e.g. http://grafana:3000.")
@click.option(
    "--token",
    envvar="GRAFANA_TOKEN",
    default=None,
    help="Service-account token (or GRAFANA_TOKEN).",
)
@click.option(
    "--user", envvar="GRAFANA_USER", default=None, help="Basic-auth user (or GRAFANA_USER)."
)
@click.option(
    "--password",
    envvar="GRAFANA_PASSWORD",
    default=None,
    hidden=True,
    help="Basic-auth password; use GRAFANA_PASSWORD rather than the flag.",
)
@click.option(
    "--prometheus-url",
    default="http://prometheus:9090",
    show_default=True,
    help="Prometheus URL as Grafana's server reaches it.",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=DEFAULT_DIR,
    show_default=True,
    help="Folder with the dashboard JSON.",
)
def provision_command(
    url: str,
    token: str | None,
    user: str | None,
    password: str | None,
    prometheus_url: str,
    directory: Path,
) -> None:
    """Install the Prometheus datasource and every dashboard of DIR into Grafana at URL."""
    try:
        dashboards = load_dashboards(directory)
        report = provision(grafana_api(url, token, user, password), dashboards, prometheus_url)
    except ProvisionError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"datasource {DATASOURCE_UID}: {report.datasource}")
    for title in report.dashboards:
        click.echo(f"dashboard: {title}")
