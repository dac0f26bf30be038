"""Position estimator throughput: the service end to end vs a bare ultralytics predict loop."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import click


@click.command("detect")
@click.option(
    "--config", "config_path", type=click.Path(path_type=Path), default=Path("facility.yaml")
)
@click.option("--flow", default="prod", show_default=True, help="Flow whose settings to use.")
@click.option("--weights", type=click.Path(path_type=Path), default=None, help="Override weights.")
@click.option("--imgsz", type=click.IntRange(64, 2048), default=None, help="Override imgsz.")
@click.option("--device", default=None, help="cpu, cuda, cuda:0 (default: DEPOTWATCH_DEVICE).")
@click.option("--frames", default=64, show_default=True, type=click.IntRange(8, 10000))
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1, 20))
@click.option(
    "--batch",
    "batches",
    default="",
    help="Comma-separated batch sizes to compare, e.g. 1,8 (default: the flow's max_batch).",
)
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
    batches: str,
    use_settings: bool,
    json_out: Path | None,
) -> None:
    """Frames/s of the position estimator (S3 fetch, decode, infer, map, publish) vs bare predict.

    Both run in this process on the same rendered frames, alternating bare and service rounds
    so drifting machine load hits both; medians are compared. The bare loop gets the images
    exactly as the service decodes them. Goal: service >= 0.9x bare at the same batch size.
    """
    from schemas.facility import load_facility
    from services.benchmarks.estimator_bench import (
        BENCH_FLOW,
        bench_facility,
        bench_settings,
        bench_topic,
        decoded_like_service,
        publish_frames,
        render_bench_frames,
        side_by_side,
        workdir,
    )
    from services.position_estimator.config import SERVICE, position_estimator_config
    from services.position_estimator.detector import WeightsError, YoloDetector
    from services.position_estimator.service import position_stream
    from services.runtime.facility_watch import FacilityWatch

    def say(line: str) -> None:
        click.echo(f"[bench detect] {line}", err=True)

    facility = load_facility(config_path)
    tmp = workdir()
    report: dict[str, Any] = {"runs": []}
    try:
        with bench_settings(use_settings, say) as settings:
            if device:
                settings = settings.model_copy(update={"device": device})
            path = bench_facility(config_path, tmp)
            watch = FacilityWatch(path)
            base = position_estimator_config(watch.config, path, flow, settings, "replay")
            sizes = [int(b) for b in batches.split(",") if b.strip()] or [base.max_batch]
            size = imgsz or base.imgsz
            say(f"rendering {frames} frames")
            bench_frames = render_bench_frames(facility, frames)
            images = decoded_like_service(bench_frames, size)
            for batch in sizes:
                try:
                    detector = YoloDetector(
                        weights or base.weights, size, base.confidence, settings.device, batch
                    )
                except WeightsError as exc:
                    raise click.ClickException(str(exc)) from None
                detector.warm_up()
                model = detector._model  # the bare loop calls ultralytics directly

                def bare(batch: int = batch, model: Any = model, det: Any = detector) -> None:
                    for i in range(0, len(images), batch):
                        model.predict(
                            images[i : i + batch],
                            imgsz=det.imgsz,
                            conf=det.confidence,
                            device=det.device,
                            verbose=False,
                        )

                topic = bench_topic(settings)
                config = position_estimator_config(
                    watch.config,
                    path,
                    BENCH_FLOW,
                    settings,
                    "replay",
                    max_batch=batch,
                    weights=weights,
                    frames_topic=topic,
                )
                stream = position_stream(settings, config, watch, detector)

                def publish(r: int, topic: str = topic) -> None:
                    publish_frames(settings, bench_frames, topic, first_seq=r * frames)

                def say_batch(line: str, batch: int = batch) -> None:
                    say(f"batch {batch}, {line}")

                figures = side_by_side(
                    stream,
                    SERVICE,
                    rounds,
                    frames,
                    bare,
                    publish,
                    say_batch,
                )
                report["runs"].append(
                    {
                        "batch": batch,
                        "device": settings.device,
                        "imgsz": detector.imgsz,
                        "decoded": f"{images[0].shape[1]}x{images[0].shape[0]}",
                        "weights": str(detector.weights),
                        "frames_per_round": frames,
                        **figures,
                    }
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    click.echo(format_report(report))
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2) + "\n")


def format_report(report: dict[str, Any]) -> str:
    """Human-readable lines of a run."""
    lines = []
    for run in report["runs"]:
        stages = ", ".join(f"{k} {v} ms" for k, v in run["service_stage_ms_per_frame"].items())
        svc = ", ".join(f"{t['fps']:.1f}" for t in run["service_rounds"])
        bare = ", ".join(f"{t['fps']:.1f}" for t in run["bare_rounds"])
        lines += [
            f"detect, batch {run['batch']}, {run['device']}, imgsz {run['imgsz']}, "
            f"frames decoded at {run['decoded']}, {run['frames_per_round']} frames a round:",
            f"  service {run['service_fps']:7.2f} frames/s "
            f"{1000 / max(run['service_fps'], 1e-9):6.2f} ms/frame (rounds: {svc})",
            f"  bare    {run['bare_fps']:7.2f} frames/s "
            f"{1000 / max(run['bare_fps'], 1e-9):6.2f} ms/frame (rounds: {bare})",
            f"  service stages per frame: {stages}",
            f"  CPU ms/frame (this process): service {run['service_cpu_ms_per_frame']}, bare "
            f"{run['bare_cpu_ms_per_frame']}",
            f"  service / bare = {run['service_vs_bare']}  (goal >= 0.9)",
        ]
    return "\n".join(lines)
