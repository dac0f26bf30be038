"""Plate reader throughput: the service end to end vs bare ultralytics + rapidocr loops."""

from __future__ import annotations

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
    batch: int | None,
    use_settings: bool,
    json_out: Path | None,
) -> None:
    """Frames/s of the plate reader (fetch, decode, detect, crop, OCR, normalise, publish) vs a
    bare loop of ultralytics predict + rapidocr recognition on the same decoded images.

    Also times rapidocr alone on the plate crops, to show what the OCR itself costs.
    """
    from schemas.facility import load_facility
    from services.benchmarks.estimator_bench import (
        BENCH_FLOW,
        bench_facility,
        bench_settings,
        drive,
        publish_frames,
        render_bench_frames,
        stage_seconds,
        timed,
        workdir,
    )
    from services.plate_ocr.config import SERVICE, plate_ocr_config
    from services.plate_ocr.ocr_engine import RapidTextRecogniser
    from services.plate_ocr.service import plate_stream
    from services.position_estimator.detector import WeightsError, YoloDetector
    from services.runtime.facility_watch import FacilityWatch

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
            base = plate_ocr_config(watch.config, path, flow, settings, "replay", batch, weights)
            try:
                detector = YoloDetector(
                    base.weights,
                    imgsz or base.imgsz,
                    base.detector_confidence,
                    settings.device,
                    base.max_batch,
                )
            except WeightsError as exc:
                raise click.ClickException(str(exc)) from None
            detector.warm_up()
            recogniser = RapidTextRecogniser()
            engine = recogniser.engine
            say(f"rendering {frames} frames")
            bench_frames = render_bench_frames(facility, frames)
            images = [f.image for f in bench_frames]
            model = detector._model  # the bare loop calls ultralytics directly
            plate_ids = [k for k, v in detector.class_names.items() if v == "plate"]
            step = base.max_batch
            crops: list[Any] = []

            def bare() -> None:
                crops.clear()
                for i in range(0, len(images), step):
                    results = model.predict(
                        images[i : i + step],
                        imgsz=detector.imgsz,
                        conf=detector.confidence,
                        device=detector.device,
                        verbose=False,
                    )
                    for img, res in zip(images[i : i + step], res_list(results), strict=True):
                        for (x1, y1, x2, y2), k in zip(
                            res.boxes.xyxy.tolist(), res.boxes.cls.tolist(), strict=True
                        ):
                            if int(k) in plate_ids and y2 - y1 >= 12:
                                crop = img[int(y1) : int(y2) + 1, int(x1) : int(x2) + 1]
                                crops.append(crop)
                                engine(crop, use_det=False, use_cls=False, use_rec=True)

            say("bare detect + rapidocr loop")
            bare1 = timed("bare", len(images), bare)
            plates = len(crops)

            def ocr_alone() -> None:
                for crop in crops:
                    engine(crop, use_det=False, use_cls=False, use_rec=True)

            ocr_only = timed("rapidocr alone", len(images), ocr_alone)
            topic = publish_frames(settings, bench_frames)
            config = plate_ocr_config(
                watch.config,
                path,
                BENCH_FLOW,
                settings,
                "replay",
                batch,
                weights,
                frames_topic=topic,
            )
            say("service loop")
            stages0 = stage_seconds(SERVICE, BENCH_FLOW)
            service = drive(plate_stream(settings, config, watch, detector, recogniser), frames)
            stages1 = stage_seconds(SERVICE, BENCH_FLOW)
            say("bare loop again")
            bare2 = timed("bare", len(images), bare)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bare_fps = (bare1.fps + bare2.fps) / 2
    report: dict[str, Any] = {
        "batch": base.max_batch,
        "device": settings.device,
        "imgsz": detector.imgsz,
        "weights": str(detector.weights),
        "plates_per_pass": plates,
        "service": service.as_dict(),
        "bare": [bare1.as_dict(), bare2.as_dict()],
        "rapidocr_alone_ms_per_plate": round(1000 * ocr_only.seconds / max(1, plates), 2),
        "service_stage_ms_per_frame": {
            k: round(1000 * (stages1[k] - stages0[k]) / frames, 2) for k in stages1
        },
        "service_vs_bare": round(service.fps / bare_fps, 3) if bare_fps else None,
    }
    stages = ", ".join(f"{k} {v} ms" for k, v in report["service_stage_ms_per_frame"].items())
    click.echo(
        f"ocr, batch {report['batch']}, {report['device']}, imgsz {report['imgsz']}, "
        f"{plates} plates in {len(images)} frames:\n"
        f"  service  {service.fps:7.2f} frames/s  {service.ms_per_frame:7.2f} ms/frame  "
        f"({stages})\n"
        f"  bare     {bare_fps:7.2f} frames/s  (runs: {bare1.fps:.2f}, {bare2.fps:.2f})\n"
        f"  rapidocr alone {report['rapidocr_alone_ms_per_plate']} ms/plate\n"
        f"  service / bare = {report['service_vs_bare']}  (goal >= 0.9)"
    )
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2) + "\n")


def res_list(results: Any) -> list[Any]:
    """Ultralytics returns a list of Results; keep the type checker out of it."""
    return list(results)
