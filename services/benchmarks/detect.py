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
@click.option(
    "--flow", default="prod", show_default=True, help="Flow whose detector settings to use."
)
@click.option("--weights", type=click.Path(path_type=Path), default=None, help="Override weights.")
@click.option("--imgsz", type=click.IntRange(64, 2048), default=None, help="Override imgsz.")
@click.option("--device", default=None, help="cpu, cuda, cuda:0 (default: DEPOTWATCH_DEVICE).")
@click.option("--frames", default=64, show_default=True, type=click.IntRange(8, 10000))
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
    batches: str,
    use_settings: bool,
    json_out: Path | None,
) -> None:
    """Frames/s of the position estimator (S3 fetch, decode, infer, map, publish) vs bare predict.

    Both run in this process on the same rendered frames, alternating bare / service / bare so
    drifting machine load hits both; the goal is service >= 0.9x bare at the same batch size.
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
            say(f"rendering {frames} frames")
            bench_frames = render_bench_frames(facility, frames)
            images = [f.image for f in bench_frames]
            for batch in sizes:
                try:
                    detector = YoloDetector(
                        weights or base.weights,
                        imgsz or base.imgsz,
                        base.confidence,
                        settings.device,
                        batch,
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

                say(f"batch {batch}: bare predict loop")
                bare1 = timed("bare", len(images), bare)
                topic = publish_frames(settings, bench_frames)
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
                say(f"batch {batch}: service loop")
                stages0 = stage_seconds(SERVICE, BENCH_FLOW)
                service = drive(position_stream(settings, config, watch, detector), frames)
                stages1 = stage_seconds(SERVICE, BENCH_FLOW)
                say(f"batch {batch}: bare predict loop again")
                bare2 = timed("bare", len(images), bare)
                bare_fps = (bare1.fps + bare2.fps) / 2
                report["runs"].append(
                    {
                        "batch": batch,
                        "device": settings.device,
                        "imgsz": detector.imgsz,
                        "weights": str(detector.weights),
                        "service": service.as_dict(),
                        "bare": [bare1.as_dict(), bare2.as_dict()],
                        "service_stage_ms_per_frame": {
                            k: round(1000 * (stages1[k] - stages0[k]) / frames, 2) for k in stages1
                        },
                        "service_vs_bare": round(service.fps / bare_fps, 3) if bare_fps else None,
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
        bare = run["bare"]
        stages = ", ".join(f"{k} {v} ms" for k, v in run["service_stage_ms_per_frame"].items())
        lines += [
            f"detect, batch {run['batch']}, {run['device']}, imgsz {run['imgsz']}:",
            f"  service  {run['service']['fps']:7.2f} frames/s  "
            f"{run['service']['ms_per_frame']:7.2f} ms/frame  ({stages})",
            f"  bare     {(bare[0]['fps'] + bare[1]['fps']) / 2:7.2f} frames/s  "
            f"(runs: {bare[0]['fps']:.2f}, {bare[1]['fps']:.2f})",
            f"  service / bare = {run['service_vs_bare']}  (goal >= 0.9)",
        ]
    return "\n".join(lines)
