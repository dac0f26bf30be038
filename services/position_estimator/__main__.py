"""``depotwatch position-estimator --flow NAME``: YOLO head/tail detection -> track positions."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

import click

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
def position_estimator_command(
    flow: str,
    config_path: Path | None,
    mode: str,
    weights: Path | None,
    frames_topic: str,
    max_batch: int | None,
) -> None:
    """Detect locomotive heads/tails in frames.v1 and publish positions.<flow>.v1."""

    def build(settings: Settings, watch: FacilityWatch, path: Path) -> FrameStream:
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
