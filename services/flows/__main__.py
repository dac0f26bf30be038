"""``depotwatch run --flow dev``: start one flow's estimators beside whatever already runs.

A flow's processes (position-estimator, plate-ocr, state-estimator, as configured for the flow)
read the shared ``frames.v1`` (the position estimator) or the flow's own estimates (plate-ocr
reads the position estimates' plate boxes; with ``positions_from``, another flow's) in consumer
groups of their own and write only topics named for the flow, so starting ``dev`` cannot touch
``prod``'s topics. Each child is restarted with backoff if it dies; SIGTERM / Ctrl-C stops them
all (their whole process groups).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from schemas.facility import ConfigError, FacilityConfig, load_facility
from services.runtime.settings import load_settings
from services.runtime.shutdown import ShutdownSignal
from services.supervisor.plan import PlanOptions, ServiceSpec, plan_services, split_available
from services.supervisor.process import ManagedProcess, depotwatch_argv

FLOW_STAGES = ("estimator", "state")


def flow_services(cfg: FacilityConfig, config_path: Path, flow: str) -> list[ServiceSpec]:
    """The processes of one flow, in start order (estimators first, then the state estimator)."""
    if flow not in cfg.flows:
        raise click.ClickException(
            f"unknown flow {flow!r}; add it under flows: in the facility config "
            f"(known: {', '.join(sorted(cfg.flows))})"
        )
    opts = PlanOptions(config_path=config_path, simulate=False, flows=[flow], dashboard=False)
    return [s for s in plan_services(cfg, opts) if s.stage in FLOW_STAGES and s.flow == flow]


def supervise(
    specs: Sequence[ServiceSpec],
    log_dir: Path,
    shutdown: ShutdownSignal,
    echo: Callable[[str], None] = click.echo,
    cwd: Path | None = None,
) -> None:
    """Run ``specs`` as child processes until shutdown; restart those that die."""
    env = {k: v for k, v in os.environ.items() if k != "DEPOTWATCH_HTTP_PORT"}
    children = [
        ManagedProcess(
            name=s.name,
            argv=depotwatch_argv(s.argv),
            env=env,
            log_path=log_dir / f"{s.name.replace('/', '-')}.log",
            cwd=cwd or Path.cwd(),
        )
        for s in specs
    ]
    for child in children:
        child.start()
        echo(f"started {child.name} (pid {child.pid}, log {child.log_path})")
    try:
        while not shutdown.wait(1.0):
            now = time.monotonic()
            for child in children:
                event = child.poll(now)
                if event is not None:
                    echo(event[1])
    finally:
        for child in children:
            killed = child.stop()
            echo(f"stopped {child.name}" + (" (had to kill it)" if killed else ""))


@click.command("run")
@click.option("--flow", required=True, help="Flow whose estimators to run (facility config).")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None)
def run_command(flow: str, config_path: Path | None) -> None:
    """Start a flow's estimators (own consumer groups, own topics) beside prod."""
    settings = load_settings()
    path = config_path or settings.facility_config
    try:
        cfg = load_facility(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    runnable, skipped = split_available(flow_services(cfg, path, flow))
    for spec in skipped:
        click.echo(f"skipping {spec.name}: `depotwatch {spec.command}` is not installed here")
    if not runnable:
        raise click.ClickException(
            f"flow {flow!r} runs no stage; set position_estimator, plate_ocr or state_estimator "
            f"under flows.{flow}"
        )
    supervise(
        runnable, settings.infra.data_dir / "logs" / f"flow-{flow}", ShutdownSignal().install()
    )
