"""The ``depotwatch`` command line.

Subcommands live beside the code they drive and are imported only when used, so
``depotwatch config check`` does not pay for torch or Faust.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import click

# name -> "module:attribute" of a click command or group, imported on first use.
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "infra": ("services.infra.cli:infra", "Start, stop and inspect the embedded Kafka + S3."),
    "sim": ("services.simulator.cli:sim", "Depot simulator: render, serve RTSP, datasets."),
    "train": ("services.simulator.training:train_command", "Train the head/tail/plate detector."),
    "capture": (
        "services.capture.__main__:capture_command",
        "Capture one camera to the aggregator.",
    ),
    "aggregator": (
        "services.aggregator.__main__:aggregator_command",
        "Store frames, publish refs.",
    ),
    "position-estimator": (
        "services.position_estimator.__main__:position_estimator_command",
        "Detect heads/tails and place them on tracks.",
    ),
    "plate-ocr": ("services.plate_ocr.__main__:plate_ocr_command", "Read plates, decide models."),
    "state-estimator": (
        "services.state_estimator.__main__:state_estimator_command",
        "Fuse estimates into facility state (Faust).",
    ),
    "bench": ("services.benchmarks.cli:bench", "Benchmarks: ingest, detect, ocr."),
    "eval": ("services.evaluation.cli:evaluate", "Accuracy against simulator ground truth."),
    "compare": ("services.evaluation.compare:compare_command", "Agreement of two flows' states."),
    "replay": ("services.flows.replay:replay_command", "Re-run a flow's estimators on history."),
    "run": ("services.flows.__main__:run_command", "Run one flow's estimators beside the others."),
    "dashboard": ("services.dashboard.__main__:dashboard_command", "Live web page of the depot."),
    "grafana": ("services.dashboard.grafana:grafana", "Provision Grafana dashboards + datasource."),
    "up": ("services.supervisor.__main__:up_command", "Run the whole pipeline, supervised."),
    "worker": ("services.jobs.worker:worker_command", "Run jobs: video, replay, score, train."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported when invoked or asked for help."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        available = [n for n, (target, _) in LAZY_COMMANDS.items() if _module_exists(target)]
        return sorted([*super().list_commands(ctx), *available])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None or cmd_name not in LAZY_COMMANDS:
            return cmd
        target, _ = LAZY_COMMANDS[cmd_name]
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] in ("services", "schemas"):
                return None
            raise click.ClickException(
                f"`depotwatch {cmd_name}` needs the Python package {exc.name!r}, which is not "
                "installed; run `make setup` (or pip install 'depotwatch[all]')"
            ) from None
        command = getattr(module, attr)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in LAZY_COMMANDS:
                rows.append((name, LAZY_COMMANDS[name][1]))
            else:
                cmd = super().get_command(ctx, name)
                if cmd is not None and not cmd.hidden:
                    rows.append((name, cmd.get_short_help_str(60)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _module_exists(target: str) -> bool:
    module_name = target.split(":")[0]
    try:
        return importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:
        return False


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="depotwatch")
def cli() -> None:
    """depotwatch: live multi-camera monitoring of a locomotive depot.

    Settings come from DEPOTWATCH_* environment variables (see README); the facility
    (tracks, cameras, flows) from facility.yaml.
    """


@cli.group()
def config() -> None:
    """Validate and inspect the facility config."""


@config.command("check")
@click.argument("file", type=click.Path(path_type=Path), default=Path("facility.yaml"))
@click.option("--quiet", "-q", is_flag=True, help="Print nothing when the config is valid.")
def config_check(file: Path, quiet: bool) -> None:
    """Validate FILE; print every problem as one line naming the field and the fix.

    Exits 0 when the config is valid, 1 otherwise.
    """
    from schemas.facility import ConfigError, load_facility

    try:
        cfg = load_facility(file)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"{exc.source}: {problem}", err=True)
        click.echo(f"{len(exc.problems)} problem(s) in {exc.source}", err=True)
        sys.exit(1)
    if not quiet:
        enabled = len(cfg.enabled_cameras)
        click.echo(
            f"{file}: ok: facility {cfg.facility_id}, {len(cfg.tracks)} tracks, "
            f"{len(cfg.cameras)} cameras ({enabled} enabled), flows {', '.join(cfg.flows)}, "
            f"{len(cfg.locomotive_models)} locomotive models"
        )


@cli.group()
def schemas() -> None:
    """Message schemas of every topic."""


@schemas.command("export")
@click.argument("directory", type=click.Path(path_type=Path))
def schemas_export(directory: Path) -> None:
    """Write one JSON Schema file per message model (and the facility config) to DIRECTORY."""
    from schemas.base import with_schema_version
    from schemas.facility import FacilityConfig
    from schemas.topics import MESSAGE_MODELS

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for model in MESSAGE_MODELS:
        path = directory / f"{model.__name__}.schema.json"
        doc: dict[str, Any] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            **with_schema_version(model),
        }
        path.write_text(json.dumps(doc, indent=2) + "\n")
        written.append(path)
    facility = directory / "FacilityConfig.schema.json"
    facility.write_text(
        json.dumps(
            {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                **FacilityConfig.model_json_schema(),
            },
            indent=2,
        )
        + "\n"
    )
    written.append(facility)
    for path in written:
        click.echo(str(path))


@schemas.command("topics")
@click.option(
    "--config", "config_path", type=click.Path(path_type=Path), default=Path("facility.yaml")
)
def schemas_topics(config_path: Path) -> None:
    """List every topic the facility's flows need, with model, key, partitions and config
    (retention from DEPOTWATCH_TOPICS__*, as every service creates them)."""
    from schemas.facility import ConfigError, load_facility
    from schemas.topics import topics_for
    from services.runtime.settings import load_settings

    try:
        cfg = load_facility(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    for spec in topics_for(cfg.flows, load_settings().topics.layout()):
        cfgs = ",".join(f"{k}={v}" for k, v in spec.config.items())
        click.echo(
            f"{spec.name:32} {spec.model.__name__:18} key={spec.key_field:12} "
            f"partitions={spec.partitions} {cfgs}"
        )


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="depotwatch")


if __name__ == "__main__":
    main()
