"""``depotwatch up``: the whole pipeline on one machine, supervised, with a live status."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections import deque
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import click

from schemas.facility import ConfigError, load_facility
from services.dashboard.config import DashboardSettings
from services.infra import EmbeddedInfra, InfraError, initialise
from services.infra.keeper import InfraKeeper
from services.infra.log_cleaner import CleanerThread, embedded_cleaner
from services.runtime.kafka import KafkaUnavailableError
from services.runtime.logs import configure_logging
from services.runtime.observability import Health, ObservabilityServer, with_grace
from services.runtime.settings import load_settings
from services.runtime.storage import StorageError
from services.simulator.world import ScenarioError, load_scenario
from services.supervisor.plan import PlanOptions
from services.supervisor.supervisor import (
    AlreadyRunningError,
    Supervisor,
    free_port,
    reap_leftovers,
)

if TYPE_CHECKING:
    from schemas.facility import FacilityConfig
    from services.infra import EmbeddedInfra


class Console:
    """Progress lines and the live table: redrawn in place on a terminal, plain lines otherwise.

    Every line also goes to ``log_path``. Writing to the terminal must never stop a shutdown:
    when the terminal is gone (window closed, SSH dropped), output errors are swallowed.
    """

    def __init__(self, live: bool, plain_every_s: float = 15.0) -> None:
        self.live = live
        self.recent: deque[str] = deque(maxlen=8)
        self._plain_every_s = plain_every_s
        self._last_plain = 0.0
        self.log_path: Path | None = None
        self._terminal = True

    def _echo(self, text: str) -> None:
        if not self._terminal:
            return
        try:
            click.echo(text)
        except OSError:
            self._terminal = False

    def say(self, line: str) -> None:
        """A progress or event line."""
        stamped = f"{time.strftime('%H:%M:%S')} {line}"
        self.recent.append(stamped)
        self._echo(stamped)
        if self.log_path is not None:
            with contextlib.suppress(OSError), self.log_path.open("a") as fh:
                fh.write(stamped + "\n")

    def render(self, table: str) -> None:
        """Show the status table."""
        if self.live:
            # Home + clear: redraw the table in place, recent events under it.
            self._echo("\x1b[H\x1b[J" + table + "\n\n" + "\n".join(self.recent))
        elif time.monotonic() - self._last_plain >= self._plain_every_s:
            self._last_plain = time.monotonic()
            self._echo(table)


def _env_for_children(settings_env: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DEPOTWATCH_HTTP_PORT"}
    env.update(settings_env)
    return env


@click.command("up")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Facility YAML (default: DEPOTWATCH_FACILITY_CONFIG or facility.yaml).",
)
@click.option(
    "--sim/--no-sim",
    default=None,
    help="Serve simulated cameras (default: when every enabled camera has a sim pose and a "
    "loopback RTSP source); --no-sim captures the sources in the config.",
)
@click.option(
    "--external/--embedded",
    default=None,
    help="Use the Kafka and S3 of DEPOTWATCH_KAFKA__BOOTSTRAP_SERVERS / DEPOTWATCH_S3__ENDPOINT, "
    "or start the embedded ones (default: external when either is set).",
)
@click.option("--flow", "flows", multiple=True, help="Run only these flows (default: all).")
@click.option(
    "--dashboard-port",
    type=int,
    default=None,
    help="Dashboard port (default DEPOTWATCH_DASHBOARD_PORT or 8088).",
)
@click.option("--no-dashboard", is_flag=True, help="Do not start the built-in dashboard.")
@click.option(
    "--skip",
    multiple=True,
    help="Do not run this service: a command (plate-ocr) or a name (capture/cam-s1).",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Data and logs (default DEPOTWATCH_INFRA__DATA_DIR or .depotwatch).",
)
@click.option(
    "--live/--no-live",
    default=None,
    help="Redraw the status table in place (default: when stdout is a terminal).",
)
@click.option(
    "--scenario",
    default="depot-day",
    show_default=True,
    help="Simulator scenario (`depotwatch sim scenarios`, or a YAML path); with --sim only.",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Simulator scenario seed.")
@click.option(
    "--from-clips",
    is_flag=True,
    help="With --sim: serve each camera as a real one streams (15 fps H.264, rendered once into "
    ".depotwatch/clips: 60 s of the scenario forward, then back, in a loop) instead of "
    "rendering every frame live.",
)
@click.option(
    "--restart-unhealthy-after",
    "unhealthy_restart_s",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    help="Restart a running service whose /livez (the checks a restart can fix) has failed "
    "this many seconds (alive but stuck, as a Kubernetes liveness probe would); 0: never.",
)
def up_command(
    config_path: Path | None,
    sim: bool | None,
    external: bool | None,
    flows: tuple[str, ...],
    dashboard_port: int | None,
    no_dashboard: bool,
    skip: tuple[str, ...],
    data_dir: Path | None,
    live: bool | None,
    scenario: str,
    seed: int,
    from_clips: bool,
    unhealthy_restart_s: float,
) -> None:
    """Run the whole pipeline: infrastructure, cameras, captures, aggregator, estimators,
    state estimators and dashboard, restarted when they crash, stopped together on Ctrl-C.

    Editing the facility config while it runs starts, stops or restarts only the affected
    captures; a config with errors is reported and the running one kept.
    """

    settings = load_settings()
    if data_dir is not None:
        settings = settings.model_copy(
            update={"infra": settings.infra.model_copy(update={"data_dir": data_dir})}
        )
    configure_logging("supervisor", settings.log_level, "console")
    console = Console(sys.stdout.isatty() if live is None else live)
    path = (config_path or settings.facility_config).resolve()
    try:
        cfg = load_facility(path)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"{exc.source}: {problem}", err=True)
        raise SystemExit(1) from None
    unknown = sorted(set(flows) - set(cfg.flows))
    if unknown:
        raise click.UsageError(
            f"--flow {', '.join(unknown)}: not in {path} (known: {', '.join(cfg.flows)})"
        )
    run_flows = list(flows) or list(cfg.flows)
    if sim is None:
        sim = simulated_cameras(cfg)
        console.say(
            "cameras: simulated (their sources are the local simulator)"
            if sim
            else "cameras: real (sources are not the local simulator; --sim forces it)"
        )
    if from_clips and not sim:
        raise click.UsageError(
            "--from-clips serves the simulated cameras from clips; these cameras are real "
            "(add --sim to simulate them, or drop --from-clips)"
        )
    if sim:
        try:
            load_scenario(scenario)
        except ScenarioError as exc:
            raise click.UsageError(f"--scenario: {exc}") from None
    if external is None:
        # Endpoints set in the environment mean "use these": one command for both worlds.
        external = "bootstrap_servers" in settings.kafka.model_fields_set or (
            "endpoint" in settings.s3.model_fields_set
        )

    data_dir_path = settings.infra.data_dir.resolve()
    console.log_path = data_dir_path / "logs" / "supervisor.log"
    console.log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        reap_leftovers(data_dir_path / "status.json", console.say)
    except AlreadyRunningError as exc:
        raise click.ClickException(str(exc)) from None

    stop = {"requested": False}
    supervisor: Supervisor | None = None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Repeated signals do not cut the shutdown short: an abrupt exit would orphan the
        # services, and every stop step is bounded (SIGKILL after a timeout) anyway.
        if stop["requested"]:
            console.say("already stopping; services that do not stop in time are killed")
        stop["requested"] = True
        if supervisor is not None:
            supervisor.stop_event.set()

    # SIGHUP too: a closed terminal must stop the pipeline cleanly, not orphan it.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    infra: EmbeddedInfra | None = None
    started_infra = False
    if external:
        console.say(
            f"using external Kafka {settings.kafka.bootstrap_servers} and S3 {settings.s3.endpoint}"
        )

        try:
            initialise(settings, run_flows, console.say)
        except (KafkaUnavailableError, StorageError) as exc:
            raise click.ClickException(str(exc)) from None
    else:
        infra = EmbeddedInfra(settings, run_flows, progress=console.say)
        started_infra = not infra.status().healthy
        try:
            infra.up()
        except InfraError as exc:
            raise click.ClickException(str(exc)) from None
        settings = infra.client_settings
    if stop["requested"]:
        _down(infra, started_infra, console)
        return

    zmq_port = free_port()
    dash = load_settings(DashboardSettings)
    env = _env_for_children(
        {
            "DEPOTWATCH_FACILITY_CONFIG": str(path),
            "DEPOTWATCH_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "DEPOTWATCH_S3__ENDPOINT": settings.s3.endpoint,
            "DEPOTWATCH_S3__BUCKET": settings.s3.bucket,
            "DEPOTWATCH_S3__ACCESS_KEY": settings.s3.access_key.get_secret_value(),
            "DEPOTWATCH_S3__SECRET_KEY": settings.s3.secret_key.get_secret_value(),
            # The dashboard's /api/v1/jobs and the job worker: the embedded Redis.
            "DEPOTWATCH_JOBS__REDIS_URL": settings.jobs.redis_url.get_secret_value(),
            "DEPOTWATCH_AGGREGATOR__BIND": f"tcp://127.0.0.1:{zmq_port}",
            "DEPOTWATCH_CAPTURE__AGGREGATOR_ENDPOINT": f"tcp://127.0.0.1:{zmq_port}",
        }
    )
    options = PlanOptions(
        config_path=path,
        simulate=sim,
        flows=run_flows,
        dashboard_port=dash.port if dashboard_port is None else dashboard_port,
        dashboard=not no_dashboard,
        skip=skip,
        scenario=scenario,
        seed=seed,
        from_clips=from_clips,
    )
    supervisor = Supervisor(
        cfg,
        options,
        env,
        data_dir_path,
        console.say,
        cwd=Path.cwd(),
        unhealthy_restart_s=unhealthy_restart_s or None,
    )
    if stop["requested"]:
        supervisor.stop_event.set()
    health = Health()
    health.add("services", supervisor.health)
    cleaner: CleanerThread | None = None
    if infra is not None:
        embedded = infra
        # A killed broker or S3 is started again (it used to stay dead until `infra up`).
        supervisor.watchers.append(InfraKeeper(embedded, console.say).tick)
        health.add(
            "infra",
            with_grace(lambda: (embedded.status().healthy, "embedded broker and S3"), grace_s=60.0),
        )
    metrics: ObservabilityServer | None = None
    try:
        if infra is not None:
            # The embedded broker never deletes a batch and lists them all on every fetch: its
            # retention, and the state estimators' internal topics purged behind their groups.
            cleaner = CleanerThread(embedded_cleaner(settings, run_flows)).start()
        metrics = ObservabilityServer(health, settings.http_host, settings.http_port).start()
        console.say(
            f"supervisor metrics on {metrics.url}/metrics; status in {supervisor.status_path}"
        )
        supervisor.start_all()
        if not no_dashboard:
            console.say(f"dashboard: http://{dash.host}:{options.dashboard_port}/")
        supervisor.run(console.render)
    finally:
        console.say("stopping every service …")
        for line in supervisor.stop():
            console.say(line)
        if metrics is not None:
            metrics.stop()
        if cleaner is not None:
            cleaner.stop()
        _down(infra, started_infra, console)
        console.say("stopped")


def simulated_cameras(cfg: FacilityConfig) -> bool:
    """Whether the config's cameras are the simulator's: every enabled one has a pose (so it
    can be rendered) and an RTSP source on this machine."""

    cams = cfg.captured_cameras
    return bool(cams) and all(
        c.pose is not None
        and urlparse(c.source).scheme == "rtsp"
        and urlparse(c.source).hostname in ("127.0.0.1", "localhost", "::1")
        for c in cams
    )


def _down(infra: EmbeddedInfra | None, started: bool, console: Console) -> None:
    """Stop the embedded infrastructure if this run started it (a reused one keeps running)."""
    if infra is None or not started:
        return
    try:
        lines = infra.down()
    except Exception as exc:  # shutdown goes on: report, never hide behind a traceback
        console.say(
            f"stopping the embedded infrastructure failed: {exc}; run `depotwatch infra down`"
        )
        return
    for line in lines:
        console.say(line)
