"""``depotwatch capture --camera ID``: capture one camera to the aggregator."""

from __future__ import annotations

import logging
from pathlib import Path

import click
from pydantic import ValidationError

from schemas.base import describe_validation_error
from schemas.facility import Camera, ConfigError, load_facility
from services.capture.service import CaptureService
from services.runtime.capture_settings import CaptureSettings
from services.runtime.logs import configure_logging
from services.runtime.observability import Health, ObservabilityServer
from services.runtime.settings import load_settings
from services.runtime.shutdown import ShutdownSignal

log = logging.getLogger("services.capture")


def resolve_camera(config: Path, camera_id: str, source: str | None) -> Camera:
    """The camera from the facility config, with ``source`` overriding its URL.

    Raises :class:`click.ClickException` with one line naming the problem and the fix.
    """
    try:
        facility = load_facility(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        camera = facility.camera(camera_id)
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0])) from None
    if source is None:
        return camera
    try:
        return Camera.model_validate({**camera.model_dump(), "source": source})
    except ValidationError as exc:
        raise click.ClickException(f"--source: {describe_validation_error(exc)}") from None


@click.command("capture")
@click.option("--camera", "camera_id", required=True, help="Camera id from the facility config.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Facility YAML (default: DEPOTWATCH_FACILITY_CONFIG or facility.yaml).",
)
@click.option("--source", default=None, help="Read this URL instead of the camera's source.")
@click.option(
    "--aggregator",
    default=None,
    help="ZeroMQ endpoint of the aggregator (default: DEPOTWATCH_CAPTURE__AGGREGATOR_ENDPOINT).",
)
def capture_command(
    camera_id: str, config_path: Path | None, source: str | None, aggregator: str | None
) -> None:
    """Capture one camera: keep frames at its fps, JPEG-encode, send to the aggregator.

    Serves /metrics and /healthz on DEPOTWATCH_HTTP_HOST:DEPOTWATCH_HTTP_PORT. Stops cleanly
    on SIGTERM or Ctrl-C.
    """

    settings = load_settings()
    configure_logging(f"capture-{camera_id}", settings.log_level, settings.log_format)
    camera = resolve_camera(config_path or settings.facility_config, camera_id, source)
    capture_settings = load_settings(CaptureSettings)
    if aggregator:
        capture_settings = capture_settings.model_copy(update={"aggregator_endpoint": aggregator})
    if not camera.enabled:
        log.warning(
            "camera is disabled in the facility config; capturing anyway",
            extra={"camera_id": camera.id},
        )
    shutdown = ShutdownSignal().install()
    service = CaptureService(camera, capture_settings, shutdown)
    health = Health()
    health.add("camera", service.health)
    server = ObservabilityServer(health, settings.http_host, settings.http_port).start()
    log.info(
        "capture started",
        extra={
            "camera_id": camera.id,
            "fps": camera.fps,
            "aggregator": capture_settings.aggregator_endpoint,
            "http": server.url,
        },
    )
    try:
        service.run()
    except ValueError as exc:  # a malformed aggregator endpoint
        raise click.ClickException(str(exc)) from None
    finally:
        server.stop()
        log.info("capture stopped", extra={"camera_id": camera.id})


if __name__ == "__main__":
    capture_command()
