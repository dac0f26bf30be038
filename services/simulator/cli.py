"""``depotwatch sim``: render, serve RTSP cameras, write datasets, measure render speed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from schemas.facility import ConfigError, FacilityConfig, load_facility

if TYPE_CHECKING:
    from services.simulator.frames import FrameSource

CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=Path("facility.yaml"),
    envvar="DEPOTWATCH_FACILITY_CONFIG",
    show_default=True,
    help="Facility config (env DEPOTWATCH_FACILITY_CONFIG).",
)


def _facility(path: Path) -> FacilityConfig:
    try:
        return load_facility(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def sim() -> None:
    """Depot simulator: scenarios, rendering, RTSP cameras, detector datasets."""


@sim.command("dataset")
@CONFIG_OPTION
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Dataset directory.")
@click.option(
    "--scale",
    type=click.FloatRange(0.05, 100),
    default=1.0,
    show_default=True,
    help="Multiply the number of seeds per split.",
)
@click.option("--ticks-per-seed", type=click.IntRange(1, 1000), default=4, show_default=True)
def dataset_command(config_path: Path, out: Path, scale: float, ticks_per_seed: int) -> None:
    """Write a YOLO dataset (train/val/test from disjoint seeds and scenarios) to OUT."""
    from dataclasses import replace

    from services.simulator.dataset import default_plan, write_dataset

    facility = _facility(config_path)
    plans = [replace(p, ticks_per_seed=ticks_per_seed) for p in default_plan(scale)]
    counts = write_dataset(facility, out, plans, progress=click.echo)
    for split, c in counts.items():
        click.echo(
            f"{split}: {c['images']} images, head {c['head']}, tail {c['tail']}, plate {c['plate']}"
        )
    click.echo(f"wrote {out / 'data.yaml'}")


SCENARIO_OPTION = click.option(
    "--scenario",
    default="depot-day",
    show_default=True,
    help="Built-in scenario name (see `depotwatch sim scenarios`) or a scenario YAML path.",
)
SEED_OPTION = click.option("--seed", type=int, default=1, show_default=True, help="Scenario seed.")
CAMERAS_OPTION = click.option(
    "--cameras", default="", help="Comma-separated camera ids (default: every enabled camera)."
)


def _frame_source(config_path: Path, scenario: str, seed: int, cameras: str) -> FrameSource:
    from services.simulator.frames import FrameSource
    from services.simulator.world import ScenarioError, load_scenario

    facility = _facility(config_path)
    try:
        loaded = load_scenario(scenario)
        wanted = [c.strip() for c in cameras.split(",") if c.strip()] or None
        return FrameSource(facility, loaded, seed, cameras=wanted)
    except (ScenarioError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


@sim.command("scenarios")
def scenarios_command() -> None:
    """List the built-in scenarios."""
    from services.simulator.world import builtin_scenarios, load_scenario

    for name in builtin_scenarios():
        sc = load_scenario(name)
        click.echo(f"{name:14} {sc.split:5} {sc.duration_s:6.0f}s  {sc.description.strip()[:80]}")


@sim.command("render")
@CONFIG_OPTION
@SCENARIO_OPTION
@SEED_OPTION
@CAMERAS_OPTION
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output directory.")
@click.option("--max-ticks", type=click.IntRange(1), default=None, help="Stop after N ticks.")
def render_command(
    config_path: Path, scenario: str, seed: int, cameras: str, out: Path, max_ticks: int | None
) -> None:
    """Render a scenario to OUT: one MP4 + labels JSONL per camera, ground_truth.jsonl."""
    from services.simulator.serve import write_videos

    source = _frame_source(config_path, scenario, seed, cameras)
    paths = write_videos(source, out, max_ticks)
    for cam_id, path in paths.items():
        click.echo(f"{cam_id}: {path}")
    click.echo(f"ground truth: {out / 'ground_truth.jsonl'}")


@sim.command("clip")
@CONFIG_OPTION
@SCENARIO_OPTION
@SEED_OPTION
@click.option("--camera", "camera_id", required=True, help="A camera with a pose.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Output file: .y4m (a browser's fake camera) or .mp4 (H.264, a keyframe every 2 s: "
    "a camera source for capture, file:///...).",
)
@click.option("--seconds", type=click.FloatRange(0.1), default=10, show_default=True)
@click.option("--fps", type=click.IntRange(1, 60), default=15, show_default=True)
@click.option(
    "--size", default="", help="WIDTHxHEIGHT of the clip, e.g. 1280x720 (default: the camera's)."
)
@click.option(
    "--start",
    type=click.FloatRange(0),
    default=0,
    show_default=True,
    help="Seconds into the scenario where the clip starts.",
)
def clip_command(
    config_path: Path,
    scenario: str,
    seed: int,
    camera_id: str,
    out: Path,
    seconds: float,
    fps: int,
    size: str,
    start: float,
) -> None:
    """Render one camera's view as a clip: a fake camera for a browser (.y4m) or an IP
    camera's stream for capture (.mp4).

    Chromium plays a .y4m as its camera with --use-fake-device-for-media-stream
    --use-file-for-fake-video-capture=OUT, so the /webrtc page streams a simulated view of the
    depot (a browser camera with the pose of a real one) without a phone. A .mp4 is H.264 with
    a keyframe every 2 s; as a camera's source (file:///path.mp4) capture decodes it at its
    own frame rate, looping, as it would a camera's RTSP stream.
    """
    from functools import partial

    from services.simulator.clips import CLIP_SLICES, write_h264
    from services.simulator.world import ScenarioError, load_scenario
    from services.simulator.y4m import clip_frames, write_y4m

    wh: tuple[int, int] | None = None
    if size:
        try:
            w, h = (int(v) for v in size.lower().split("x"))
            wh = (w, h)
        except ValueError:
            raise click.BadParameter(f"{size!r}: write WIDTHxHEIGHT, e.g. 1280x720") from None
    if out.suffix not in (".y4m", ".mp4"):
        raise click.BadParameter(f"{out}: write a .y4m or .mp4 file", param_hint="--out")
    # An .mp4 is coded as the served clips are (slices a picture included).
    write = partial(write_h264, slices=CLIP_SLICES) if out.suffix == ".mp4" else write_y4m
    try:
        facility, scene = _facility(config_path), load_scenario(scenario)
        frames = clip_frames(facility, scene, seed, camera_id, seconds, fps, wh, start)
        n = write(frames, out, fps)
    except (ScenarioError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {out}: {n} frames at {fps} fps")


@sim.command("bench-render")
@CONFIG_OPTION
@SCENARIO_OPTION
@SEED_OPTION
@click.option("--frames", type=click.IntRange(1), default=20, show_default=True)
@click.option("--tick", type=click.IntRange(0), default=200, show_default=True)
def bench_render_command(
    config_path: Path, scenario: str, seed: int, frames: int, tick: int
) -> None:
    """Measure render speed (frames/s per camera, full render without cache)."""
    import statistics
    import time

    source = _frame_source(config_path, scenario, seed, "")
    renderer = source.renderer
    state = source.simulation.state(min(tick, source.ticks - 1))
    rates, cpu_rates = [], []
    for cam in source.cameras:
        renderer.render(state, cam.id)  # warm up
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(frames):
            renderer.render(state, cam.id)
        wall = (time.perf_counter() - wall0) / frames
        cpu = (time.process_time() - cpu0) / frames
        rates.append(1.0 / wall)
        cpu_rates.append(1.0 / cpu)
        click.echo(
            f"{cam.id}: {cam.width}x{cam.height} {1 / wall:6.1f} frames/s wall "
            f"({wall * 1000:.0f} ms), {1 / cpu:6.1f} frames/s per CPU second ({cpu * 1000:.0f} ms)"
        )
    click.echo(
        f"median {statistics.median(rates):.1f} frames/s per camera wall clock, "
        f"{statistics.median(cpu_rates):.1f} per CPU second "
        f"({len(state.placements)} locomotives in the scenario, full render, no scene cache)"
    )


@sim.command("serve")
@CONFIG_OPTION
@SCENARIO_OPTION
@SEED_OPTION
@CAMERAS_OPTION
@click.option("--host", default="127.0.0.1", show_default=True, help="RTSP bind address.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="RTSP port (default: the port in the cameras' source URLs; 0 picks a free one).",
)
@click.option("--speed", type=click.FloatRange(0.01, 100), default=1.0, show_default=True)
@click.option("--loop/--no-loop", default=True, show_default=True, help="Restart when done.")
@click.option(
    "--publish/--no-publish",
    default=True,
    show_default=True,
    help="Publish GroundTruth to ground-truth.v1 (DEPOTWATCH_KAFKA__BOOTSTRAP_SERVERS).",
)
@click.option(
    "--from-clips",
    is_flag=True,
    help="Serve each camera from a 15 fps H.264 clip rendered once (cached in --clips-dir) and "
    "only packetised while serving, as IP cameras stream: the test bed costs almost no CPU. "
    "Each clip plays --clip-seconds of the scenario forward, then back, in a loop (the scene "
    "never jumps), and the ground truth follows it.",
)
@click.option(
    "--clip-seconds",
    type=click.FloatRange(1),
    default=60,
    show_default=True,
    help="Seconds of the scenario each clip shows (--from-clips; played forward, then back).",
)
@click.option(
    "--clip-start",
    type=click.FloatRange(0),
    default=0,
    show_default=True,
    help="Seconds into the scenario where each clip starts (--from-clips).",
)
@click.option(
    "--clips-dir",
    type=click.Path(path_type=Path),
    default=Path(".depotwatch/clips"),
    show_default=True,
    help="Cache of the rendered, encoded clips (--from-clips).",
)
def serve_command(
    config_path: Path,
    scenario: str,
    seed: int,
    cameras: str,
    host: str,
    port: int | None,
    speed: float,
    loop: bool,
    publish: bool,
    from_clips: bool,
    clip_seconds: float,
    clip_start: float,
    clips_dir: Path,
) -> None:
    """Serve every simulated camera as H.264 RTSP and publish ground truth, in real time.

    Live (the default), every frame is rendered and encoded as it is served, at each camera's
    fps. With --from-clips, each camera's view is rendered once at 15 fps, as a real camera's
    stream, and replayed (capture then decimates it to the camera's fps).
    """
    from urllib.parse import urlparse

    from schemas.base import utc_now
    from services.runtime.logs import configure_logging
    from services.runtime.settings import load_settings
    from services.runtime.shutdown import ShutdownSignal
    from services.simulator.frames import SimTick
    from services.simulator.serve import RtspCameraServer, RtspServerError, run_realtime

    settings = load_settings()
    configure_logging("simulator", settings.log_level, settings.log_format)
    if from_clips:
        if speed != 1.0:
            raise click.BadParameter("clips play in real time; drop --speed", param_hint="--speed")
        clip = (clip_seconds, clip_start, clips_dir)
        _serve_clips(config_path, scenario, seed, cameras, host, port, loop, publish, clip)
        return
    source = _frame_source(config_path, scenario, seed, cameras)
    if port is None:
        port = urlparse(source.cameras[0].source).port or 8554
    producer = None
    if publish:
        from services.runtime.kafka import MessageProducer

        producer = MessageProducer(settings.kafka, client_id="depotwatch-simulator")
    shutdown = ShutdownSignal().install()
    server = RtspCameraServer(source.cameras, host=host, port=port)
    try:
        server.start()
    except RtspServerError as exc:
        raise click.ClickException(str(exc)) from None
    for cam in source.cameras:
        click.echo(f"{cam.id}: {server.url(cam.id)} ({cam.fps:g} fps)")

    def on_tick(tick: SimTick) -> None:
        for cam_id, frame in tick.frames.items():
            server.push(cam_id, frame.image)
        if producer is not None:
            # Captures stamp frames with the wall clock: the truth of a tick served live is
            # stamped the same way, so the two can be paired (the tick number stays in it).
            producer.publish(tick.ground_truth.model_copy(update={"at": utc_now()}))
            producer.poll(0)

    crashed = False
    try:
        run_realtime(
            source,
            on_tick,
            lambda: shutdown.requested or not server.alive,
            speed=speed,
            loop=loop,
            sleep=shutdown.wait,
        )
    except (RtspServerError, BrokenPipeError):
        crashed = True
    finally:
        crashed = crashed or (not shutdown.requested and not server.alive)
        server.stop()
        if producer is not None:
            producer.close(10)
    if crashed:
        raise click.ClickException(
            "the GStreamer RTSP server exited unexpectedly; run with DEPOTWATCH_LOG_LEVEL=DEBUG "
            "to see its output"
        )
    if not shutdown.requested:
        click.echo("scenario finished")


CLIP_FPS = 15
"""Frame rate of served clips: what IP cameras send; capture keeps each camera's fps of it."""


def _serve_clips(
    config_path: Path,
    scenario: str,
    seed: int,
    cameras: str,
    host: str,
    port: int | None,
    loop: bool,
    publish: bool,
    clip: tuple[float, float, Path],
) -> None:
    """``sim serve --from-clips``: render what is not cached, then serve the clips over RTSP
    and publish the ground truth of the clip frame being shown. ``clip``: (seconds, start in
    the scenario, cache directory)."""
    from urllib.parse import urlparse

    from schemas.base import utc_now
    from services.runtime.settings import load_settings
    from services.runtime.shutdown import ShutdownSignal
    from services.simulator.clips import ClipStreams, cached_clips
    from services.simulator.frames import due
    from services.simulator.serve import RtspServerError
    from services.simulator.world import ScenarioError, Simulation, load_scenario
    from services.simulator.y4m import clip_offsets

    facility = _facility(config_path)
    try:
        scene = load_scenario(scenario)
    except ScenarioError as exc:
        raise click.ClickException(str(exc)) from None
    posed = [c for c in facility.enabled_cameras if c.pose is not None and not c.webrtc]
    wanted = [c.strip() for c in cameras.split(",") if c.strip()]
    unknown = sorted(set(wanted) - {c.id for c in posed})
    if unknown:
        raise click.ClickException(
            f"cameras {unknown} are not enabled simulated cameras (with a pose); "
            f"use some of {[c.id for c in posed]}"
        )
    chosen = [c for c in posed if not wanted or c.id in wanted]
    if not chosen:
        raise click.ClickException("no enabled camera has a pose; there is nothing to serve")
    if port is None:
        port = urlparse(chosen[0].source).port or 8554
    clip_seconds, clip_start, clips_dir = clip
    try:
        # Forward and back: looped, the scene never jumps (a jump back to the start would
        # teleport every locomotive that moved, and the state could not follow).
        clips = cached_clips(
            facility, scene, seed, chosen, clip_seconds, CLIP_FPS, clips_dir, clip_start,
            click.echo, palindrome=True,
        )  # fmt: skip
        streams = ClipStreams(clips, host=host, port=port)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    lengths = {cam: len(clip.units) for cam, clip in streams.encoded.items()}
    longest = max(lengths.values())
    short = sorted(cam for cam, n in lengths.items() if n != longest)
    if short:
        # A camera down when its clip starts has no frames until it is back: its loop would
        # run out of step with the others and with the ground truth.
        raise click.ClickException(
            f"the clips of {short} are shorter than the others ({lengths}): those cameras are "
            "down when the clip starts in this scenario; pick a --clip-start after they are up"
        )

    settings = load_settings()
    producer = None
    if publish:
        from services.runtime.kafka import MessageProducer

        producer = MessageProducer(settings.kafka, client_id="depotwatch-simulator")
        simulation = Simulation(facility, scene, seed, tick_s=1.0 / CLIP_FPS)
        clock_camera = chosen[0].id
        played = len(streams.encoded[clock_camera].units)
        ticks = [round(clip_start * CLIP_FPS) + o for o in clip_offsets((played + 2) // 2, True)]
        truth_hz = max(c.fps for c in chosen)  # as live: a truth per tick of the fastest camera

        def on_unit(camera_id: str, index: int) -> None:
            # Frame ``index`` of every clip shows scenario tick ``ticks[index]``: its truth,
            # stamped with the wall clock as captures stamp frames.
            shown = camera_id == clock_camera and due(truth_hz, index, 1.0 / CLIP_FPS)
            if shown and producer is not None:
                truth = simulation.ground_truth(simulation.state(ticks[index % len(ticks)]))
                producer.publish(truth.model_copy(update={"at": utc_now()}))
                producer.poll(0)

        streams.on_unit = on_unit

    shutdown = ShutdownSignal().install()
    try:
        streams.start()
    except RtspServerError as exc:
        if producer is not None:
            producer.close(10)
        raise click.ClickException(str(exc)) from None
    for cam in chosen:
        shown = streams.encoded[cam.id]
        click.echo(
            f"{cam.id}: {streams.url(cam.id)} ({shown.fps:g} fps, {shown.seconds:.1f} s loop, "
            f"capture keeps {cam.fps:g} fps)"
        )
    pass_s = max(c.seconds for c in streams.encoded.values())
    try:
        deadline = None if loop else time.monotonic() + pass_s
        while not shutdown.requested and streams.alive:
            if deadline is not None and time.monotonic() >= deadline:
                break
            shutdown.wait(0.5)
    finally:
        crashed = not shutdown.requested and not streams.alive
        streams.stop()
        if producer is not None:
            producer.close(10)
    if crashed and streams.error is not None:
        raise click.ClickException(
            f"the clip streams stopped: {type(streams.error).__name__}: {streams.error}"
        )
    if crashed:
        raise click.ClickException(
            "the GStreamer RTSP server exited unexpectedly; run with DEPOTWATCH_LOG_LEVEL=DEBUG "
            "to see its output"
        )
    if not shutdown.requested:
        click.echo("clips played once")


@sim.command("calibrate")
@CONFIG_OPTION
@click.option("--camera", "camera_ids", multiple=True, help="Camera id (repeatable; default all).")
def calibrate_command(config_path: Path, camera_ids: tuple[str, ...]) -> None:
    """Print calibration points derived from each simulated camera's pose (YAML).

    Keeps the floor points of the current calibration when the pose still sees them, else
    picks four floor points near the image corners; paste the output into facility.yaml.
    """
    import yaml

    from services.simulator.calibration import calibration_from_pose

    facility = _facility(config_path)
    out = {}
    for cam in facility.cameras:
        if camera_ids and cam.id not in camera_ids:
            continue
        if cam.pose is None:
            click.echo(f"# {cam.id}: no pose, skipped (real cameras are calibrated by hand)")
            continue
        out[cam.id] = {"calibration": calibration_from_pose(cam)}
    click.echo(yaml.safe_dump(out, sort_keys=False, default_flow_style=None).rstrip())


@sim.command("facility")
@click.option("--seed", type=int, required=True, help="Depot seed: the same seed, the same depot.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the facility YAML here (default: print it).",
)
@click.option(
    "--scenario-seed",
    type=int,
    default=None,
    help="Also write the generated scenario of this seed (to --scenario-out).",
)
@click.option(
    "--scenario-out", type=click.Path(path_type=Path), default=None, help="Scenario YAML path."
)
def facility_command(
    seed: int, out: Path | None, scenario_seed: int | None, scenario_out: Path | None
) -> None:
    """A random but plausible depot (facility YAML), deterministic per --seed.

    2-6 straight or gently curved tracks with gates and buffer stops, 4-20 cameras on the
    walls or the roof calibrated from their poses (no camera sees a whole locomotive), the
    shipped fleet plus up to two models of this depot only. Gates are named in track names.
    """
    import yaml

    from services.simulator.generated_depot import generate_depot as depot_of
    from services.simulator.generated_depot import generate_depot_data, generate_scenario

    data, _ = generate_depot_data(seed)
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
    if out is None:
        click.echo(text.rstrip())
    else:
        out.write_text(text)
        click.echo(f"wrote {out}")
    if scenario_seed is not None:
        if scenario_out is None:
            raise click.UsageError("--scenario-seed needs --scenario-out PATH")
        scenario = generate_scenario(depot_of(seed), scenario_seed)
        scenario_out.write_text(
            yaml.safe_dump(scenario.model_dump(mode="json", exclude_none=True), sort_keys=False)
        )
        click.echo(f"wrote {scenario_out}")
