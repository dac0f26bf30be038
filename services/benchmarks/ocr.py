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
    """Frames/s of the plate reader (fetch, decode, detect, crop, OCR, normalise, publish) vs a
    bare loop of ultralytics predict + rapidocr recognition on the same decoded images.

    Rounds alternate bare and service (medians are compared); rapidocr alone on the plate
    crops is timed too, to show what the OCR itself costs. Goal: service >= 0.9x bare.
    """
    from schemas.facility import load_facility
    from services.benchmarks.estimator_bench import (
        BENCH_FLOW,
        bench_facility,
        bench_settings,
        bench_topic,
        drive,
        median_cpu_ms,
        median_fps,
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
            images = [f.image for f in bench_frames]  # plates are read at full resolution
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
                    for img, res in zip(images[i : i + step], list(results), strict=True):
                        for (x1, y1, x2, y2), k in zip(
                            res.boxes.xyxy.tolist(), res.boxes.cls.tolist(), strict=True
                        ):
                            if int(k) in plate_ids and y2 - y1 >= 12:
                                crop = img[int(y1) : int(y2) + 1, int(x1) : int(x2) + 1]
                                crops.append(crop)
                                engine(crop, use_det=False, use_cls=False, use_rec=True)

            def ocr_alone() -> None:
                for crop in crops:
                    engine(crop, use_det=False, use_cls=False, use_rec=True)

            topic = bench_topic(settings)
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
            stream = plate_stream(settings, config, watch, detector, recogniser)
            bare_runs, service_runs = [], []
            stages0 = stage_seconds(SERVICE, BENCH_FLOW)
            try:
                for r in range(rounds):
                    say(f"round {r + 1}/{rounds}: bare, then service")
                    bare_runs.append(timed("bare", len(images), bare))
                    publish_frames(settings, bench_frames, topic, first_seq=r * frames)
                    service_runs.append(drive(stream, (r + 1) * frames))
                bare_runs.append(timed("bare", len(images), bare))
            finally:
                stream.close()
            stages1 = stage_seconds(SERVICE, BENCH_FLOW)
            plates = len(crops)
            ocr_only = timed("rapidocr alone", len(images), ocr_alone)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    service_fps, bare_fps = median_fps(service_runs), median_fps(bare_runs)
    handled = rounds * frames
    report: dict[str, Any] = {
        "batch": base.max_batch,
        "device": settings.device,
        "imgsz": detector.imgsz,
        "weights": str(detector.weights),
        "frames_per_round": frames,
        "plates_per_round": plates,
        "service_fps": round(service_fps, 2),
        "bare_fps": round(bare_fps, 2),
        "service_rounds": [t.as_dict() for t in service_runs],
        "bare_rounds": [t.as_dict() for t in bare_runs],
        "rapidocr_alone_ms_per_plate": round(1000 * ocr_only.seconds / max(1, plates), 2),
        "service_stage_ms_per_frame": {
            k: round(1000 * (stages1[k] - stages0[k]) / handled, 2) for k in stages1
        },
        "service_vs_bare": round(service_fps / bare_fps, 3) if bare_fps else None,
        "service_cpu_ms_per_frame": round(median_cpu_ms(service_runs), 2),
        "bare_cpu_ms_per_frame": round(median_cpu_ms(bare_runs), 2),
    }
    stages = ", ".join(f"{k} {v} ms" for k, v in report["service_stage_ms_per_frame"].items())
    svc = ", ".join(f"{t.fps:.1f}" for t in service_runs)
    bare_list = ", ".join(f"{t.fps:.1f}" for t in bare_runs)
    click.echo(
        f"ocr, batch {report['batch']}, {report['device']}, imgsz {report['imgsz']}, "
        f"{plates} plates in {len(images)} frames a round:\n"
        f"  service {service_fps:7.2f} frames/s (rounds: {svc})\n"
        f"  bare    {bare_fps:7.2f} frames/s (rounds: {bare_list})\n"
        f"  service stages per frame: {stages}\n"
        f"  CPU ms/frame (this process): service {report['service_cpu_ms_per_frame']}, bare "
        f"{report['bare_cpu_ms_per_frame']}\n"
        f"  rapidocr alone {report['rapidocr_alone_ms_per_plate']} ms/plate\n"
        f"  service / bare = {report['service_vs_bare']}  (goal >= 0.9)"
    )
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2) + "\n")
