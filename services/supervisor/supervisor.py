"""The supervisor behind ``depotwatch up``: runs the plan, restarts, hot camera changes, status.

Everything happens on one thread in :meth:`Supervisor.run`'s loop: poll children (restart the
dead with backoff), look at the facility config (apply camera changes), scrape each child's
/metrics for the status table, write ``status.json``. Stopping stops children in the reverse
of the start order, each by process group.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import Counter, Gauge

from schemas.facility import ConfigError, FacilityConfig, load_facility
from services.infra.processes import free_port
from services.runtime.facility_watch import file_stamp
from services.supervisor.plan import (
    STAGES,
    CameraChanges,
    PlanOptions,
    ServiceSpec,
    camera_changes,
    capture_spec,
    plan_services,
    split_available,
)
from services.supervisor.process import ManagedProcess, depotwatch_argv
from services.supervisor.status import (
    STAGE_COUNTERS,
    Scrape,
    ServiceRow,
    counter_totals,
    format_table,
    rate,
)

log = logging.getLogger(__name__)

UNHEALTHY_KILL_AFTER_S = 20.0
"""An unhealthy child asked to stop (SIGTERM) is killed if still running after this long."""
SERVICE_UP = Gauge("depotwatch_service_up", "1 while a supervised service runs", ["service"])
SERVICE_RESTARTS = Counter(
    "depotwatch_service_restarts_total",
    "Restarts of a supervised service after it died",
    ["service"],
)
UNHEALTHY_RESTARTS = Counter(
    "depotwatch_service_unhealthy_restarts_total",
    "Services restarted because their /livez (else /healthz) failed for longer than the limit",
    ["service"],
)

Say = Callable[[str], None]


def _child_request(port: int, path: str, token: str | None) -> urllib.request.Request:
    """A GET of a child's ``path``; the dashboard guards its pages with its access token."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    return request


def _scrape(port: int, timeout: float = 1.0, token: str | None = None) -> Scrape | None:
    request = _child_request(port, "/metrics", token)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    return Scrape(time.monotonic(), counter_totals(text))


def _healthz(port: int, timeout: float = 2.0, token: str | None = None) -> tuple[bool, str] | None:
    """(alive, the failing checks) from a child's /livez (the checks a restart can fix), or
    its /healthz where it has no /livez; None when it does not answer."""
    for path in ("/livez", "/healthz"):
        request = _child_request(port, path, token)
        try:
            with urllib.request.urlopen(request, timeout=timeout):
                return True, ""
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and path == "/livez":
                exc.close()
                continue
            if exc.code != 503:
                return None
            try:
                checks = json.loads(exc.read().decode()).get("checks", {})
            except (ValueError, OSError, AttributeError):
                checks = {}
            failing = [f"{k}: {v.get('detail', '')}" for k, v in checks.items() if not v.get("ok")]
            return False, "; ".join(failing) or "unhealthy"
        except OSError:
            return None
    return None


@dataclass
class Child:
    """A planned service, its process and its metrics port."""

    spec: ServiceSpec
    process: ManagedProcess
    metrics_port: int | None
    scrapes: list[Scrape] = field(default_factory=list)
    unhealthy_since: float | None = None
    """Monotonic time since when its /livez has failed without a break (None: healthy)."""


class Supervisor:
    """Starts the pipeline's processes and keeps them running until :meth:`stop`."""

    def __init__(
        self,
        config: FacilityConfig,
        options: PlanOptions,
        base_env: Mapping[str, str],
        data_dir: Path,
        say: Say,
        cwd: Path | None = None,
        available: Callable[[str], bool] | None = None,
        argv_for: Callable[[ServiceSpec], list[str]] | None = None,
        config_check_s: float = 1.0,
        status_every_s: float = 2.0,
        unhealthy_restart_s: float | None = 300.0,
    ) -> None:
        self.config = config
        self.options = options
        self.base_env = dict(base_env)
        self.data_dir = data_dir
        self.log_dir = data_dir / "logs"
        self.status_path = data_dir / "status.json"
        self.targets_path = data_dir / "prometheus-targets.json"
        self.say = say
        self.cwd = cwd or Path.cwd()
        self._available = available
        # Tests run stand-in programs; production runs `python -m services.cli <argv>`.
        self._argv_for = argv_for or (lambda spec: depotwatch_argv(spec.argv))
        self.children: dict[str, Child] = {}
        self.watchers: list[Callable[[float], None]] = []
        """Called with the monotonic time on every round (e.g. the embedded infra keeper)."""
        self.skipped: list[str] = []
        self.stop_event = threading.Event()
        self._config_check_s = config_check_s
        self._status_every_s = status_every_s
        self.unhealthy_restart_s = unhealthy_restart_s
        """Restart a running child whose /livez has failed this long (None: never), as a
        Kubernetes liveness probe would; a process can be alive and stuck."""
        self._config_stamp = file_stamp(options.config_path)
        self.rows: list[ServiceRow] = []

    # ---- starting ---------------------------------------------------------------------

    def _child(self, spec: ServiceSpec) -> Child:
        port = (spec.metrics_port or free_port()) if spec.metrics else None
        env = {**self.base_env, **dict(spec.env)}
        if port is not None and spec.metrics_port is None:
            env["DEPOTWATCH_HTTP_PORT"] = str(port)
        safe = spec.name.replace("/", "-")
        proc = ManagedProcess(
            name=spec.name,
            argv=self._argv_for(spec),
            env=env,
            log_path=self.log_dir / f"{safe}.log",
            cwd=self.cwd,
        )
        return Child(spec, proc, port)

    def _start(self, spec: ServiceSpec) -> None:
        child = self._child(spec)
        child.process.start()
        self.children[spec.name] = child
        SERVICE_UP.labels(spec.name).set(1)

    def start_all(self) -> None:
        """Start every available service of the plan, stage by stage, with progress lines."""
        specs = plan_services(self.config, self.options)
        run, skip = (
            split_available(specs, self._available) if self._available else split_available(specs)
        )
        for spec in skip:
            self.say(
                f"skipping {spec.name}: `depotwatch {spec.command}` is not installed in this "
                "build (its service is not there yet)"
            )
        self.skipped = [s.name for s in skip]
        for stage in STAGES:
            batch = [s for s in run if s.stage == stage]
            if self.stop_event.is_set():
                return  # Ctrl-C while starting: start nothing more, stop() cleans up
            if not batch:
                continue
            for spec in batch:
                self._start(spec)
            names = ", ".join(s.name for s in batch)
            self.say(f"started {len(batch)} {stage} process(es): {names}")
            self._wait_started(batch, timeout=5.0)

    def _wait_started(self, batch: list[ServiceSpec], timeout: float) -> None:
        """Give a stage a moment to bind its ports before the next stage connects to it."""
        deadline = time.monotonic() + timeout
        pending = [s for s in batch if self.children[s.name].metrics_port is not None]
        while pending and time.monotonic() < deadline and not self.stop_event.is_set():
            still = []
            for s in pending:
                child = self.children[s.name]
                if not child.process.running:
                    continue  # died at once: poll() reports and restarts it
                assert child.metrics_port is not None
                if _scrape(child.metrics_port, 0.3, self._token(child)) is None:
                    still.append(s)
            pending = still
            if pending:
                self.stop_event.wait(0.2)

    # ---- running ----------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Restart dead children whose backoff is over."""
        for child in list(self.children.values()):
            event = child.process.poll(now)
            if event is not None:
                kind, line = event
                self.say(line)
                if kind == "restarted":
                    SERVICE_RESTARTS.labels(child.spec.name).inc()
                elif child.metrics_port is not None and child.spec.metrics_port is None:
                    # The next process gets a fresh port: another program may take the old one.
                    port = free_port()
                    child.metrics_port = port
                    child.process.env = {**child.process.env, "DEPOTWATCH_HTTP_PORT": str(port)}
                    child.scrapes.clear()
            SERVICE_UP.labels(child.spec.name).set(1 if child.process.running else 0)

    def check_config(self) -> CameraChanges | None:
        """Apply a changed facility config; a broken one is reported and the running one kept."""
        stamp = file_stamp(self.options.config_path)
        if stamp == self._config_stamp:
            return None
        self._config_stamp = stamp
        try:
            new = load_facility(self.options.config_path)
        except ConfigError as exc:
            for problem in exc.problems:
                self.say(f"config rejected: {exc.source}: {problem}")
            self.say("keeping the running config; fix the file and save it again")
            return None
        changes = camera_changes(self.config, new)
        self.config = new
        if changes:
            self.apply_camera_changes(changes)
        self.say(f"facility config reloaded: {changes.describe()}")
        return changes

    def apply_camera_changes(self, changes: CameraChanges) -> None:
        """Start, stop and restart only the capture processes a config edit affects."""
        capture_ok = self._available("capture") if self._available else None
        for cid in changes.removed + changes.changed:
            child = self.children.pop(f"capture/{cid}", None)
            if child is not None:
                child.process.stop()
                SERVICE_UP.labels(child.spec.name).set(0)
        sim = self.children.get("sim")
        if sim is not None and (changes.added or changes.changed):
            # The simulator renders the cameras of the config it was started with: a new or
            # moved simulated camera needs it restarted (captures reconnect on their own).
            sim.process.stop()
            sim.process.start()
            self.say("simulator restarted to serve the changed cameras")
        for cid in changes.added + changes.changed:
            spec = capture_spec(self.config.camera(cid), self.options.config_path)
            if {spec.command, spec.name} & set(self.options.skip):
                continue
            if capture_ok is False or (capture_ok is None and not split_available([spec])[0]):
                continue
            self._start(spec)

    def _token(self, child: Child) -> str | None:
        if child.spec.stage != "dashboard":
            return None
        return child.process.env.get("DEPOTWATCH_DASHBOARD_TOKEN") or None

    def refresh_status(self) -> list[ServiceRow]:
        """Scrape every child's metrics and build the status rows; writes status.json."""
        rows = []
        for name, child in sorted(self.children.items(), key=lambda kv: _order(kv[1].spec)):
            proc = child.process
            state = "up" if proc.running else ("restarting" if proc.next_start_at else "down")
            r = drops = None
            if proc.running and child.metrics_port is not None:
                scrape = _scrape(child.metrics_port, token=self._token(child))
                if scrape is not None:
                    child.scrapes = [*child.scrapes[-1:], scrape]
                    counters = STAGE_COUNTERS.get(child.spec.stage)
                    if counters and len(child.scrapes) == 2:
                        r = rate(child.scrapes[0], child.scrapes[1], counters[0])
                    if counters and counters[1]:
                        drops = scrape.totals.get(counters[1])
                else:
                    state = "starting"
            if proc.running:
                self._check_liveness(child, time.monotonic())
            rows.append(ServiceRow(name, state, proc.restarts, r, drops, proc.pid))
        self.rows = rows
        self._write_status(rows)
        return rows

    def _check_liveness(self, child: Child, now: float) -> None:
        """Restart ``child`` when its /livez has failed for ``unhealthy_restart_s``."""
        proc = child.process
        if self.unhealthy_restart_s is None or child.metrics_port is None:
            return
        if proc.kill_at is not None:
            return  # being restarted already
        health = _healthz(child.metrics_port, token=self._token(child))
        if health is None or health[0]:
            child.unhealthy_since = None  # healthy, or not answering (starting, or dying)
            return
        if child.unhealthy_since is None:
            child.unhealthy_since = now
        if now - child.unhealthy_since < self.unhealthy_restart_s:
            return
        self.say(
            f"{child.spec.name} unhealthy for {now - child.unhealthy_since:.0f}s "
            f"({health[1]}); restarting it"
        )
        UNHEALTHY_RESTARTS.labels(child.spec.name).inc()
        child.unhealthy_since = None
        proc.recycle(now, UNHEALTHY_KILL_AFTER_S)  # poll() sees it exit and restarts it

    def _write_status(self, rows: list[ServiceRow]) -> None:
        doc = {
            "pid": os.getpid(),
            "updated_at": time.time(),
            "config": str(self.options.config_path),
            "cameras": [c.id for c in self.config.enabled_cameras],
            "skipped": self.skipped,
            "services": [
                {
                    "name": r.name,
                    "state": r.state,
                    "restarts": r.restarts,
                    "rate": r.rate,
                    "drops": r.drops,
                    "pid": r.pid,
                    "metrics_port": self.children[r.name].metrics_port,
                    "log": str(self.children[r.name].process.log_path),
                }
                for r in rows
            ],
        }
        # Prometheus file_sd targets: point a Prometheus at this file to scrape every service.
        targets = [
            {
                "targets": [f"127.0.0.1:{c.metrics_port}"],
                "labels": {"service": name, **({"flow": c.spec.flow} if c.spec.flow else {})},
            }
            for name, c in sorted(self.children.items())
            if c.metrics_port is not None
        ]
        _write_json(self.targets_path, targets)
        _write_json(self.status_path, doc)

    def health(self) -> tuple[bool, str]:
        """/healthz check of the supervisor: every supervised service is up."""
        down = sorted(r.name for r in self.rows if r.state != "up")
        if down:
            return False, f"not up: {', '.join(down)}"
        return True, f"{len(self.rows)} services up"

    def table(self) -> str:
        """The status table for the terminal."""
        up = sum(1 for r in self.rows if r.state == "up")
        header = f"depotwatch up: {up}/{len(self.rows)} services up · logs in {self.log_dir}"
        return format_table(self.rows, self.skipped, header)

    def run(self, render: Callable[[str], None] | None = None) -> None:
        """Supervise until :attr:`stop_event` is set (Ctrl-C / SIGTERM handlers set it)."""
        next_config = next_status = 0.0
        while not self.stop_event.is_set():
            now = time.monotonic()
            for watch in self.watchers:
                watch(now)
            self.tick(now)
            if now >= next_config:
                self.check_config()
                next_config = now + self._config_check_s
            if now >= next_status:
                self.refresh_status()
                if render is not None:
                    render(self.table())
                next_status = now + self._status_every_s
            self.stop_event.wait(0.25)

    def stop(self, timeout: float = 15.0) -> list[str]:
        """Stop every child, last started first; returns one line per forced kill."""
        lines = []
        for stage in reversed(STAGES):
            # A whole stage is asked at once, so eight captures take one timeout, not eight.
            batch = [c for c in self.children.values() if c.spec.stage == stage]
            for child in batch:
                child.process.terminate()
            deadline = time.monotonic() + timeout
            for child in batch:
                if child.process.finish_stop(deadline):
                    lines.append(f"{child.spec.name} did not stop within {timeout:.0f}s; killed it")
                SERVICE_UP.labels(child.spec.name).set(0)
        self.refresh_status()
        return lines


class AlreadyRunningError(RuntimeError):
    """Another ``depotwatch up`` supervises the same data directory."""


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def reap_leftovers(status_path: Path, say: Say, timeout: float = 10.0) -> int:
    """Stop services a previous ``up`` left running (it was killed before it could stop them).

    Raises :class:`AlreadyRunningError` when that ``up`` is still alive. Returns how many
    leftover process groups were stopped. Only processes whose command line is a depotwatch
    service are touched, so a recycled pid is never signalled.
    """
    try:
        doc = json.loads(status_path.read_text())
    except (OSError, ValueError):
        return 0
    owner = int(doc.get("pid") or 0)
    if (
        owner
        and owner != os.getpid()
        and "services.cli" in _cmdline(owner)
        and " up" in _cmdline(owner)
    ):
        raise AlreadyRunningError(
            f"another `depotwatch up` (pid {owner}) runs with data dir {status_path.parent}; "
            "stop it first or pass a different --data-dir"
        )
    stopped = 0
    for svc in doc.get("services", []):
        pid = svc.get("pid")
        if not pid or "services.cli" not in _cmdline(int(pid)):
            continue
        say(f"stopping {svc.get('name')} (pid {pid}) left running by a previous `up`")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(int(pid), signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _cmdline(int(pid)):
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(int(pid), signal.SIGKILL)
        stopped += 1
    return stopped


def _order(spec: ServiceSpec) -> tuple[int, str]:
    return STAGES.index(spec.stage), spec.name


def _write_json(path: Path, doc: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
