"""What every per-frame estimator service shares: its command-line options, how it resolves its
flow's settings, and how it starts (settings, logs, facility, one-line errors, the frame loop).

``position-estimator`` and ``plate-ocr`` differ only in what they build: the
:class:`~services.runtime.frame_stream.FrameStream` with its handler. Each passes a builder to
:func:`run_estimator`; a builder that cannot start raises :class:`EstimatorStartError` (a flow
without this stage, missing weights, no OCR engine) and the operator gets one line naming the
problem and the fix, not a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from schemas.facility import ConfigError, FacilityConfig, Flow
from services.runtime.facility_watch import FacilityWatch
from services.runtime.frame_stream import FrameStream, serve_frame_stream
from services.runtime.logs import configure_logging
from services.runtime.settings import Settings, load_settings
from services.runtime.shutdown import ShutdownSignal

F = TypeVar("F", bound=Callable[..., None])


class EstimatorStartError(RuntimeError):
    """An estimator cannot start; the message names the problem and the fix."""


class EstimatorConfigError(EstimatorStartError, ValueError):
    """The flow cannot run this estimator; the message names the field and the fix."""


def flow_spec(facility: FacilityConfig, config_path: Path, flow: str) -> Flow:
    """The facility's settings of ``flow``; a one-line error naming the known flows if none."""
    if flow not in facility.flows:
        raise EstimatorConfigError(
            f"{config_path}: no flow {flow!r}; use one of {', '.join(sorted(facility.flows))}"
        )
    return facility.flows[flow]


def resolve_weights(weights: str, config_path: Path) -> Path:
    """Weights paths in the facility config are relative to the config file's directory."""
    p = Path(weights)
    return p if p.is_absolute() else (config_path.parent / p).resolve()


_OPTIONS: tuple[Callable[[F], F], ...] = (
    click.option(
        "--flow", required=True, envvar="DEPOTWATCH_FLOW", help="Flow to run (prod, dev...)."
    ),
    click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path),
        default=None,
        help="Facility YAML (default: DEPOTWATCH_FACILITY_CONFIG or facility.yaml).",
    ),
    click.option(
        "--mode",
        type=click.Choice(["live", "replay"]),
        default="live",
        show_default=True,
        help="live: skip to the newest frame per camera when behind; replay: every frame.",
    ),
    click.option(
        "--max-batch",
        type=click.IntRange(1, 256),
        default=None,
        help="Frames per batch (default: the flow's max_batch).",
    ),
)


def estimator_options(command: F) -> F:
    """The options every estimator command takes: --flow, --config, --mode, --max-batch (each
    adds what it reads: the detector its --weights and --frames-topic, the plate reader its
    --positions-topic)."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def run_estimator(
    service: str,
    flow: str,
    config_path: Path | None,
    build: Callable[[Settings, FacilityWatch, Path], FrameStream[Any]],
) -> None:
    """Start ``service`` for ``flow``: settings, logs, the facility (watched for edits), the
    stream ``build`` makes; then serve /metrics and /healthz and run it until SIGTERM."""
    settings = load_settings()
    configure_logging(f"{service}.{flow}", settings.log_level, settings.log_format)
    path = config_path or settings.facility_config
    try:
        watch = FacilityWatch(path)
        stream = build(settings, watch, path)
    except (ConfigError, EstimatorStartError) as exc:
        raise click.ClickException(str(exc)) from None
    serve_frame_stream(stream, settings, ShutdownSignal().install())
