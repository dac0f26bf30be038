"""``depotwatch plate-ocr --flow NAME``: number plates and locomotive models from the plate boxes
the flow's position estimator found."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

import click

from schemas.estimates import PositionEstimate
from services.plate_ocr.config import SERVICE, plate_ocr_config
from services.plate_ocr.ocr_engine import RapidTextRecogniser
from services.plate_ocr.service import plate_stream
from services.runtime.estimator_service import estimator_options, run_estimator
from services.runtime.facility_watch import FacilityWatch
from services.runtime.frame_stream import FrameStream, Mode
from services.runtime.settings import Settings

log = logging.getLogger(__name__)


@click.command("plate-ocr")
@estimator_options
@click.option(
    "--positions-topic",
    default=None,
    help="Topic of the position estimates whose plate boxes to read (default: "
    "positions.<flow>.v1, or that of the flow its positions_from names; e.g. a copy to replay).",
)
def plate_ocr_command(
    flow: str,
    config_path: Path | None,
    mode: str,
    max_batch: int | None,
    positions_topic: str | None,
) -> None:
    """Read the plates the flow's position estimator found (positions.<flow>.v1), decide
    locomotive models, publish identities.<flow>.v1.

    No detector runs here: a frame is fetched from the object store only when its position
    estimate has a plate box, and only that box is cropped (full resolution) and read.
    """

    def build(
        settings: Settings, watch: FacilityWatch, path: Path
    ) -> FrameStream[PositionEstimate]:
        config = plate_ocr_config(
            watch.config, path, flow, cast(Mode, mode), max_batch, positions_topic
        )
        recogniser = RapidTextRecogniser()
        log.info(
            "starting", extra={"flow": flow, "mode": mode, "positions": config.positions_topic}
        )
        return plate_stream(settings, config, watch, recogniser)

    run_estimator(SERVICE, flow, config_path, build)
