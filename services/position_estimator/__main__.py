"""``depotwatch position-estimator --flow NAME``: YOLO head/tail detection -> track positions."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

import click

from schemas.frames import FrameRef
from services.position_estimator.config import SERVICE, position_estimator_config
from services.position_estimator.detector import YoloDetector
from services.position_estimator.service import position_stream
from services.runtime.estimator_service import estimator_options, run_estimator
from services.runtime.facility_watch import FacilityWatch
from services.runtime.frame_stream import FrameStream, Mode
from services.runtime.settings import Settings

log = logging.getLogger(__name__)


@click.command("position-estimator")
@estimator_options
@click.option(
    "--weights",
    type=click.Path(path_type=Path),
    default=None,
    help="Detector weights (default: the flow's position_estimator.weights).",
)
@click.option(
    "--frames-topic",
    default="frames.v1",
    show_default=True,
    help="Topic of the frame refs (e.g. a copy to replay).",
)
def position_estimator_command(
    flow: str,
    config_path: Path | None,
    mode: str,
    max_batch: int | None,
    weights: Path | None,
    frames_topic: str,
) -> None:
    """Detect locomotive heads, tails and plates in frames.v1 and publish positions.<flow>.v1
    (the plate reader reads the plate boxes from there)."""

    def build(settings: Settings, watch: FacilityWatch, path: Path) -> FrameStream[FrameRef]:
        config = position_estimator_config(
            watch.config, path, flow, settings, cast(Mode, mode), max_batch, weights, frames_topic
        )
        detector = YoloDetector(
            config.weights, config.imgsz, config.confidence, config.device, config.max_batch
        )
        log.info(
            "starting",
            extra={
                "flow": flow,
                "mode": mode,
                "weights": str(config.weights),
                "device": config.device,
            },
        )
        detector.prepare()
        return position_stream(settings, config, watch, detector)

    run_estimator(SERVICE, flow, config_path, build)
