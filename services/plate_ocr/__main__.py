"""``depotwatch plate-ocr --flow NAME``: number plates and locomotive models from frames."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

import click

from schemas.facility import ConfigError
from services.plate_ocr.config import SERVICE, plate_ocr_config
from services.plate_ocr.ocr_engine import OcrUnavailableError, RapidTextRecogniser
from services.plate_ocr.service import plate_stream
from services.position_estimator.config import EstimatorConfigError
from services.position_estimator.detector import WeightsError, YoloDetector
from services.runtime.facility_watch import FacilityWatch
from services.runtime.frame_stream import Mode, serve_frame_stream
from services.runtime.logs import configure_logging
from services.runtime.settings import load_settings
from services.runtime.shutdown import ShutdownSignal

log = logging.getLogger(__name__)


@click.command("plate-ocr")
@click.option("--flow", required=True, envvar="DEPOTWATCH_FLOW", help="Flow to run (prod, dev...).")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Facility YAML (default: DEPOTWATCH_FACILITY_CONFIG or facility.yaml).",
)
@click.option(
    "--mode",
    type=click.Choice(["live", "replay"]),
    default="live",
    show_default=True,
    help="live: skip to the newest frame per camera when behind; replay: process every frame.",
)
@click.option("--weights", type=click.Path(path_type=Path), default=None, help="Detector weights.")
@click.option(
    "--frames-topic",
    default="frames.v1",
    show_default=True,
    help="Topic of the frame refs (e.g. a copy to replay).",
)
@click.option("--max-batch", type=click.IntRange(1, 256), default=None, help="Frames per batch.")
def plate_ocr_command(
    flow: str,
    config_path: Path | None,
    mode: str,
    weights: Path | None,
    frames_topic: str,
    max_batch: int | None,
) -> None:
    """Read plates in frames.v1, decide locomotive models, publish identities.<flow>.v1."""

    settings = load_settings()
    configure_logging(f"{SERVICE}.{flow}", settings.log_level, settings.log_format)
    path = config_path or settings.facility_config
    try:
        watch = FacilityWatch(path)
        config = plate_ocr_config(
            watch.config, path, flow, settings, cast(Mode, mode), max_batch, weights, frames_topic
        )
        detector = YoloDetector(
            config.weights,
            config.imgsz,
            config.detector_confidence,
            config.device,
            config.max_batch,
        )
        recogniser = RapidTextRecogniser()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except (EstimatorConfigError, WeightsError, OcrUnavailableError) as exc:
        raise click.ClickException(str(exc)) from None
    log.info("starting", extra={"flow": flow, "mode": mode, "weights": str(config.weights)})
    if detector.trained_imgsz and detector.trained_imgsz != detector.imgsz:
        log.warning(
            "inference size differs from the training size; accuracy and speed will differ "
            "from the model card (set the flow's imgsz)",
            extra={"imgsz": detector.imgsz, "trained_imgsz": detector.trained_imgsz},
        )
    detector.warm_up()
    shutdown = ShutdownSignal().install()
    serve_frame_stream(
        plate_stream(settings, config, watch, detector, recogniser), settings, shutdown
    )
