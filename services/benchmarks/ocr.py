"""Plate reader throughput: the service end to end (position estimates in) vs a bare loop of
JPEG decode + rapidocr recognition of the same plate boxes."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import click


@click.command("ocr")
@click.option(
    "--config", "config_path", type=click.Path(path_type=Path), default=Path("facility.yaml")
)
@click.option("--flow", default="prod", show_default=True, help="Flow whose settings to use.")
@click.option("--weights", type=click.Path(path_type=Path), default=None, help="Override weights.")
@click.option("--imgsz", type=click.IntRange(64, 2048), default=None, help="Override imgsz.")
@click.option("--device", default=None, help="cpu, cuda, cuda:0 (default: DEPOTWATCH_DEVICE).")
@click.option("--frames", default=64, show_default=True, type=click.IntRange(8, 10000))
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1, 20))
@click.option("--batch", default=None, type=click.IntRange(1, 256), help="Frames per batch.")
@click.option(
    "--use-settings",
    is_flag=True,
    help="Use the Kafka/S3 of DEPOTWATCH_* (e.g. `depotwatch infra up`) instead of a fresh stack.",
)
@click.option("--json-out", type=click.Path(path_type=Path), default=None)
def bench_command(
    config_path: Path,
    flow: str,
    weights: Path | None,
    imgsz: int | None,
    device: str | None,
    frames: int,
    rounds: int,
    batch: int | None,
    use_settings: bool,
    json_out: Path | None,
) -> None:
    """Frames/s of the plate reader (consume position estimates, fetch and decode the frames
    with a plate box, crop, OCR, normalise, publish) vs a bare loop of JPEG decode + rapidocr
    recognition of the same crops.

    The plate boxes come from the flow's detector, run once beforehand on the frames decoded as
    the position estimator decodes them (that is the position estimator's work, benchmarked by
    `bench detect`). Rounds alternate bare and service (medians are compared). Goal: service >=
    0.9x bare.
    """
    import cv2
    import numpy as np

    from schemas.estimates import Detection, PositionEstimate
    from schemas.facility import load_facility
    from schemas.frames import FrameRef
    from services.benchmarks.estimator_bench import (
        BENCH_FLOW,
        bench_facility,
        bench_settings,
        bench_topic,
        decoded_like_service,
        publish_frames,
        render_bench_frames,
        side_by_side,
        timed,
        workdir,
    )
    from services.plate_ocr.config import SERVICE, plate_ocr_config
    from services.plate_ocr.identity import plate_crop, readable_size
    from services.plate_ocr.ocr_engine import RapidTextRecogniser
    from services.plate_ocr.service import plate_stream
    from services.position_estimator.config import position_estimator_config
    from services.position_estimator.detector import WeightsError, YoloDetector
    from services.runtime.facility_watch import FacilityWatch
    from services.runtime.frames import to_frame_pixels

    def say(line: str) -> None:
        click.echo(f"[bench ocr] {line}", err=True)

    facility = load_facility(config_path)
    tmp = workdir()
    try:
        with bench_settings(use_settings, say) as settings:
            if device:
                settings = settings.model_copy(update={"device": device})
            path = bench_facility(config_path, tmp)
            watch = FacilityWatch(path)
            pos = position_estimator_config(watch.config, path, flow, settings, "replay", batch)
            try:
                detector = YoloDetector(
                    weights or pos.weights,
                    imgsz or pos.imgsz,
                    pos.confidence,
                    settings.device,
                    pos.max_batch,
                )
            except WeightsError as exc:
                raise click.ClickException(str(exc)) from None
            detector.warm_up()
            recogniser = RapidTextRecogniser()
            engine = recogniser.engine
            say(f"rendering {frames} frames")
            bench_frames = render_bench_frames(facility, frames)
            step = pos.max_batch
            say("finding the plate boxes once (the position estimator's work, not timed)")
            small = decoded_like_service(bench_frames, detector.imgsz)
            found: list[list[Detection]] = []
            for i in range(0, len(small), step):
                found += detector.detect(small[i : i + step])
            boxes = [
                to_frame_pixels(d, (f.image.shape[1] / s.shape[1], f.image.shape[0] / s.shape[0]))
                for d, f, s in zip(found, bench_frames, small, strict=True)
            ]
            plates_of = [[d for d in ds if d.cls == "plate"] for ds in boxes]
            crops: list[Any] = []

            def bare() -> None:
                crops.clear()
                for i in range(0, len(bench_frames), step):
                    batch_crops = []
                    for frame, plates in zip(
                        bench_frames[i : i + step], plates_of[i : i + step], strict=True
                    ):
                        if not plates:
                            continue
                        buf = np.frombuffer(frame.jpeg, np.uint8)
                        image = np.asarray(cv2.imdecode(buf, cv2.IMREAD_COLOR), np.uint8)
                        batch_crops += [
                            plate_crop(image, d) for d in plates if readable_size(d, image)
                        ]
                    if batch_crops:
                        engine.text_rec(batch_crops)
                    crops.extend(batch_crops)

            def ocr_alone() -> None:
                for i in range(0, len(crops), 32):
                    engine.text_rec(crops[i : i + 32])

            def estimate(i: int, ref: FrameRef) -> PositionEstimate:
                return PositionEstimate(
                    flow=BENCH_FLOW,
                    camera_id=ref.camera_id,
                    frame=ref,
                    estimator="bench",
                    model_version="bench",
                    estimated_at=ref.captured_at,
                    detections=boxes[i],
                )

            topic = bench_topic(settings, schema=PositionEstimate)
            config = plate_ocr_config(watch.config, path, BENCH_FLOW, "replay", batch, topic)
            # The service reads every plate box, as the bare loop does (no reading is reused).
            config = dataclasses.replace(config, reread_after_s=0.0)
            stream = plate_stream(settings, config, watch, recogniser)

            def publish(r: int) -> None:
                publish_frames(settings, bench_frames, topic, r * frames, about=estimate)

            figures = side_by_side(stream, SERVICE, rounds, frames, bare, publish, say)
            plates = len(crops)
            with_plates = sum(1 for p in plates_of if p)
            ocr_only = timed("rapidocr alone", len(bench_frames), ocr_alone)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report: dict[str, Any] = {
        "batch": step,
        "device": settings.device,
        "imgsz": detector.imgsz,
        "weights": str(detector.weights),
        "frames_per_round": frames,
        "frames_with_a_plate_box": with_plates,
        "plates_per_round": plates,
        "rapidocr_alone_ms_per_plate": round(1000 * ocr_only.seconds / max(1, plates), 2),
        **figures,
    }
    stages = ", ".join(f"{k} {v} ms" for k, v in report["service_stage_ms_per_frame"].items())
    svc = ", ".join(f"{t['fps']:.1f}" for t in report["service_rounds"])
    bare_list = ", ".join(f"{t['fps']:.1f}" for t in report["bare_rounds"])
    click.echo(
        f"ocr, batch {report['batch']}, {report['device']}, imgsz {report['imgsz']}, "
        f"{plates} plates read in {len(bench_frames)} frames a round "
        f"({with_plates} frames with a plate box fetched):\n"
        f"  service {report['service_fps']:7.2f} frames/s (rounds: {svc})\n"
        f"  bare    {report['bare_fps']:7.2f} frames/s (rounds: {bare_list})\n"
        f"  service stages per frame: {stages}\n"
        f"  CPU ms/frame (this process): service {report['service_cpu_ms_per_frame']}, bare "
        f"{report['bare_cpu_ms_per_frame']}\n"
        f"  rapidocr alone {report['rapidocr_alone_ms_per_plate']} ms/plate\n"
        f"  service / bare = {report['service_vs_bare']}  (goal >= 0.9)"
    )
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2) + "\n")
