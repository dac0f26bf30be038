"""Which processes ``depotwatch up`` runs, from the facility config (pure: no processes here).

The plan is data: one :class:`ServiceSpec` per process, with the ``depotwatch`` subcommand it
runs. A subcommand that this installation does not have yet is skipped with a message rather
than crashing the whole pipeline, so ``up`` works while services are still being added.
:func:`camera_changes` tells which capture processes a config edit affects.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from schemas.facility import Camera, FacilityConfig

Stage = str
"""Start order group: sim, aggregator, capture, estimators, state, dashboard, jobs."""

STAGES: tuple[Stage, ...] = (
    "sim",
    "aggregator",
    "capture",
    "estimator",
    "state",
    "dashboard",
    "jobs",
)


@dataclass(frozen=True)
class ServiceSpec:
    """One supervised process: ``depotwatch <argv...>`` with extra environment."""

    name: str
    argv: tuple[str, ...]
    stage: Stage
    camera_id: str | None = None
    flow: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    metrics: bool = True
    """Whether the process serves /metrics on DEPOTWATCH_HTTP_PORT (the supervisor reads it)."""
    metrics_port: int | None = None
    """A fixed port of its /metrics (the dashboard serves them beside the page)."""

    @property
    def command(self) -> str:
        """The depotwatch subcommand (first argv element)."""
        return self.argv[0]


@dataclass(frozen=True)
class PlanOptions:
    """What ``up`` was asked to run."""

    config_path: Path
    simulate: bool = True
    flows: Sequence[str] | None = None
    """Flows to run estimators for; None = every flow in the config."""
    dashboard_port: int = 8088
    dashboard: bool = True
    skip: Sequence[str] = ()
    """Services not to run, by command (``plate-ocr``) or name (``capture/cam-s1``)."""
    scenario: str = "depot-day"
    """Simulator scenario served when ``simulate``."""
    seed: int = 1
    """Seed of the simulator scenario."""
    from_clips: bool = False
    """Serve the simulated cameras from clips rendered once (``sim serve --from-clips``)."""


def capture_spec(camera: Camera, config_path: Path) -> ServiceSpec:
    """The capture process of one camera."""
    return ServiceSpec(
        name=f"capture/{camera.id}",
        argv=("capture", "--camera", camera.id, "--config", str(config_path)),
        stage="capture",
        camera_id=camera.id,
    )


def plan_services(cfg: FacilityConfig, opts: PlanOptions) -> list[ServiceSpec]:
    """Every process of the pipeline for this config, in start order."""
    path = str(opts.config_path)
    specs: list[ServiceSpec] = []
    if opts.simulate:
        argv = (
            "sim",
            "serve",
            "--config",
            path,
            "--scenario",
            opts.scenario,
            "--seed",
            str(opts.seed),
            *(("--from-clips",) if opts.from_clips else ()),
        )
        specs.append(ServiceSpec("sim", argv, "sim", metrics=False))
    specs.append(ServiceSpec("aggregator", ("aggregator", "--config", path), "aggregator"))
    specs += [capture_spec(c, opts.config_path) for c in cfg.captured_cameras]
    flows = [f for f in cfg.flows if opts.flows is None or f in opts.flows]
    for flow in flows:
        settings = cfg.flows[flow]
        if settings.position_estimator is not None:
            specs.append(
                ServiceSpec(
                    f"position-estimator/{flow}",
                    ("position-estimator", "--flow", flow, "--config", path),
                    "estimator",
                    flow=flow,
                )
            )
        if settings.plate_ocr is not None:
            specs.append(
                ServiceSpec(
                    f"plate-ocr/{flow}",
                    ("plate-ocr", "--flow", flow, "--config", path),
                    "estimator",
                    flow=flow,
                )
            )
    for flow in flows:
        if cfg.flows[flow].state_estimator is not None:
            specs.append(
                ServiceSpec(
                    f"state-estimator/{flow}",
                    ("state-estimator", "--flow", flow, "--config", path),
                    "state",
                    flow=flow,
                )
            )
    if opts.dashboard:
        specs.append(
            ServiceSpec(
                "dashboard",
                ("dashboard", "--config", path, "--port", str(opts.dashboard_port)),
                "dashboard",
                metrics_port=opts.dashboard_port or None,
            )
        )
    # One job worker, so jobs sent to /api/v1/jobs run (`--skip worker` leaves it out).
    specs.append(ServiceSpec("worker", ("worker", "--slots", "1"), "jobs", metrics=False))
    return [s for s in specs if s.command not in opts.skip and s.name not in opts.skip]


def command_available(command: str) -> bool:
    """Whether this installation has ``depotwatch <command>`` (its module can be found)."""
    from services.cli import LAZY_COMMANDS

    if command not in LAZY_COMMANDS:
        return False
    module = LAZY_COMMANDS[command][0].split(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def split_available(
    specs: Sequence[ServiceSpec], available: Callable[[str], bool] = command_available
) -> tuple[list[ServiceSpec], list[ServiceSpec]]:
    """(runnable, skipped): processes whose subcommand exists here, and those that do not."""
    run: list[ServiceSpec] = []
    skip: list[ServiceSpec] = []
    cache: dict[str, bool] = {}
    for spec in specs:
        if spec.command not in cache:
            cache[spec.command] = available(spec.command)
        (run if cache[spec.command] else skip).append(spec)
    return run, skip


@dataclass(frozen=True)
class CameraChanges:
    """Which captures a config edit starts, stops and restarts."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def describe(self) -> str:
        """One line, e.g. ``added cam-x; restarted cam-s1``."""
        parts = []
        for label, ids in (
            ("added", self.added),
            ("stopped", self.removed),
            ("restarted", self.changed),
        ):
            if ids:
                parts.append(f"{label} {', '.join(ids)}")
        return "; ".join(parts) or "no camera changes"


def camera_changes(old: FacilityConfig, new: FacilityConfig) -> CameraChanges:
    """Captures to start (new or re-enabled cameras), stop (removed or disabled) and restart
    (any setting of the camera changed: source, fps, size, calibration...)."""
    before = {c.id: c for c in old.captured_cameras}
    after = {c.id: c for c in new.captured_cameras}
    return CameraChanges(
        added=sorted(set(after) - set(before)),
        removed=sorted(set(before) - set(after)),
        changed=sorted(
            cid
            for cid in set(before) & set(after)
            if before[cid].model_dump() != after[cid].model_dump()
        ),
    )
