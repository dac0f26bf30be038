"""Jobs end to end: the web app, real `depotwatch worker` processes, Redis, the broker and S3.

A rendered simulator clip goes through a video job and its timeline is scored against the
simulator's truth; a worker killed with SIGKILL mid-job does not lose the job; two workers
share jobs by their slots; a GPU training job waits while only CPU workers exist; bad
requests are refused with the field and the fix and nothing is queued.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from web_harness import run

from schemas.facility import load_facility
from schemas.facility_state import FacilityState
from schemas.ground_truth import GroundTruth
from services.dashboard.jobs_api import JobsBackend
from services.evaluation.compare import summarise
from services.jobs.store import JobStore
from services.runtime.settings import JobsSettings, Settings
from services.runtime.storage import ObjectStore

REPO = Path(__file__).resolve().parents[2]
FACILITY = REPO / "facility.yaml"
TOKEN = "jobs-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLIP_TICKS = 30
"""15 s of video at 2 fps."""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test-dim seed 1, every camera, rendered to MP4 with its ground truth."""
    from services.simulator.frames import FrameSource
    from services.simulator.serve import write_videos
    from services.simulator.world import load_scenario

    out = tmp_path_factory.mktemp("clip")
    source = FrameSource(load_facility(FACILITY), load_scenario("test-dim"), seed=1)
    write_videos(source, out, CLIP_TICKS)
    return out


@pytest.fixture
def job_settings(stack_settings: Settings, redis_url: str) -> Settings:
    """The stack's settings with jobs on this test's Redis database and short timeouts."""
    jobs = JobsSettings(
        redis_url=redis_url,  # type: ignore[arg-type]
        visibility_timeout_s=3,
        lease_s=3,
        heartbeat_s=1,
    )
    return stack_settings.model_copy(update={"jobs": jobs, "facility_config": FACILITY})


Start = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def start_worker(job_settings: Settings, tmp_path: Path) -> Iterator[Start]:
    """Starts `depotwatch worker` processes; all are killed when the test ends."""
    procs: list[subprocess.Popen[bytes]] = []
    s = job_settings
    env = {
        **os.environ,
        "DEPOTWATCH_KAFKA__BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
        "DEPOTWATCH_KAFKA__SESSION_TIMEOUT_MS": str(s.kafka.session_timeout_ms),
        "DEPOTWATCH_S3__ENDPOINT": s.s3.endpoint,
        "DEPOTWATCH_JOBS__REDIS_URL": s.jobs.redis_url.get_secret_value(),
        "DEPOTWATCH_JOBS__VISIBILITY_TIMEOUT_S": "3",
        "DEPOTWATCH_JOBS__LEASE_S": "3",
        "DEPOTWATCH_JOBS__HEARTBEAT_S": "1",
        "DEPOTWATCH_JOBS__VIDEO_CHECKPOINT_TICKS": "4",
        "DEPOTWATCH_FACILITY_CONFIG": str(FACILITY),
        "DEPOTWATCH_LOG_FORMAT": "console",
    }

    def start(name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "worker", "--name", name, "--no-gpu", *args],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def serve(settings: Settings, test: Callable[[httpx.AsyncClient], Any]) -> None:
    """The web app with the job engine of ``settings``; ``test(client)`` runs against it."""

    async def body(client: httpx.AsyncClient, server: object) -> None:
        client.headers.update(AUTH)  # reads need the token too when one is set
        await test(client)

    run(body, token=TOKEN, config=load_facility(FACILITY), jobs=JobsBackend.from_settings(settings))


async def wait_for(
    client: httpx.AsyncClient,
    job_id: str,
    done: Callable[[dict[str, Any]], bool],
    timeout_s: float,
) -> dict[str, Any]:
    """Poll the job until ``done(job)``; fail with its last status after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
        if done(job):
            return job
        assert time.monotonic() < deadline, f"job not there in {timeout_s}s: {job}"
        await asyncio.sleep(0.5)


async def submit(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    response = await client.post("/api/v1/jobs", json=body, headers=AUTH)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/api/v1/jobs/{response.json()['id']}"
    return str(response.json()["id"])


def _videos(clip: Path, cameras: list[str] | None = None) -> dict[str, str]:
    names = cameras or sorted(p.stem for p in clip.glob("*.mp4"))
    return {cam: f"file://{clip / f'{cam}.mp4'}" for cam in names}


def _truth(clip: Path) -> list[GroundTruth]:
    lines = (clip / "ground_truth.jsonl").read_text().splitlines()
    return [GroundTruth.model_validate_json(line) for line in lines]


def _object(settings: Settings, url: str) -> bytes:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return ObjectStore(settings.s3.model_copy(update={"bucket": bucket})).get(key)


def test_a_video_job_timeline_matches_the_simulator_truth(
    clip: Path, job_settings: Settings, start_worker: Start
) -> None:
    start_worker("w1@test")
    truth = _truth(clip)
    videos = _videos(clip)

    async def test(client: httpx.AsyncClient) -> None:
        # One video goes through the upload endpoint, the others are paths the worker reads.
        data = (clip / "cam-n1.mp4").read_bytes()
        up = await client.put(
            "/api/v1/videos/n1.mp4", content=data, headers={**AUTH, "Content-Type": "video/mp4"}
        )
        assert up.status_code == 201, up.text
        videos["cam-n1"] = up.json()["source"]
        job_id = await submit(
            client,
            {"kind": "video", "videos": videos, "fps": 2, "start_at": truth[0].at.isoformat()},
        )
        job = await wait_for(client, job_id, lambda j: j["state"] in ("succeeded", "failed"), 240)
        assert job["state"] == "succeeded", job["error"]
        summary = job["result"]["summary"]
        assert summary["frames"] == CLIP_TICKS * len(videos)
        artifacts = job["result"]["artifacts"]
        states = [
            FacilityState.model_validate_json(line)
            for line in _object(job_settings, artifacts["timeline"]).decode().splitlines()
        ]
        assert len(states) == CLIP_TICKS
        lengths = {t.id: t.length_m for t in load_facility(FACILITY).tracks}
        score = summarise(truth, states, max_skew_s=0.5, warmup_s=5, track_lengths=lengths)
        figures = score.figures()
        print("video job against truth:", json.dumps(figures))
        assert figures["count_rate"] >= 0.9
        assert figures["median_error_m"] <= 0.5
        tracks = [json.loads(x) for x in _object(job_settings, artifacts["tracks"]).splitlines()]
        assert {t["camera_id"] for t in tracks} <= set(videos)
        assert any(len(t["frames"]) >= 10 for t in tracks)
        # Frames are stored like live ones.
        frames = ObjectStore(
            job_settings.s3.model_copy(update={"bucket": job_settings.jobs.results_bucket})
        ).keys(f"jobs/{job_id}/frames/cam-n2/")
        assert len(frames) == CLIP_TICKS
        listed = (await client.get("/api/v1/jobs?kind=video")).json()
        assert [j["id"] for j in listed["jobs"]] == [job_id]
        finished.append(job)

    finished: list[dict[str, Any]] = []
    serve(job_settings, test)

    async def after_restart(client: httpx.AsyncClient) -> None:
        # A new app instance (as after a restart, or another replica) answers for the job.
        again = (await client.get(f"/api/v1/jobs/{finished[0]['id']}")).json()
        assert again == finished[0]

    serve(job_settings, after_restart)


def test_two_workers_share_jobs_and_a_killed_workers_job_is_finished_by_the_other(
    clip: Path, job_settings: Settings, start_worker: Start
) -> None:
    first = start_worker("w1@test", "--slots", "1")
    start_worker("w2@test", "--slots", "1")

    async def test(client: httpx.AsyncClient) -> None:
        ids = [
            await submit(client, {"kind": "video", "videos": _videos(clip, [cam])})
            for cam in ("cam-n2", "cam-s3")
        ]
        # One slot each: the two jobs run at once, one on each worker.
        deadline = time.monotonic() + 120
        while True:
            jobs = [(await client.get(f"/api/v1/jobs/{i}")).json() for i in ids]
            if all(j["state"] == "running" for j in jobs):
                break
            assert time.monotonic() < deadline, jobs
            await asyncio.sleep(0.3)
        assert {j["worker"] for j in jobs} == {"w1@test", "w2@test"}
        workers = {w["name"]: w for w in (await client.get("/api/v1/workers")).json()}
        assert set(workers) == {"w1@test", "w2@test"}
        for w in workers.values():
            assert w["slots"] == 1
            assert w["queues"] == ["video", "replay", "score", "train"]  # no GPU queues
            assert w["cpu_cores"] >= 1
            assert w["gpu"] is None
        # w1 is killed right after its job's first checkpoint (every 4 ticks here).
        victim = next(j["id"] for j in jobs if j["worker"] == "w1@test")
        await wait_for(client, victim, lambda j: (j["checkpoint"] or {}).get("chunks", 0) >= 1, 120)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed = time.monotonic()
        # Its job is handed on within a few heartbeats of the visibility timeout (3 s here),
        # although the survivor is busy (kombu alone restored it only every ~100 s).
        await wait_for(client, victim, lambda j: j["attempts"] == 2, 45)
        print(f"taken over {time.monotonic() - killed:.1f} s after the kill")
        for i in ids:
            job = await wait_for(client, i, lambda j: j["state"] in ("succeeded", "failed"), 180)
            assert job["state"] == "succeeded", job["error"]
            assert job["worker"] == "w2@test"
            summary = job["result"]["summary"]
            assert summary["ticks"] == CLIP_TICKS
            assert summary["frames"] == CLIP_TICKS  # one camera; resumed frames counted once
            timeline = _object(job_settings, job["result"]["artifacts"]["timeline"]).splitlines()
            assert len(timeline) == CLIP_TICKS  # resumed ticks are not lost or doubled
            if i == victim:
                assert job["attempts"] == 2
                assert 4 <= summary["resumed_at_tick"] < CLIP_TICKS
            else:
                assert job["attempts"] == 1
        workers = (await client.get("/api/v1/workers")).json()
        assert [w["name"] for w in workers] == ["w2@test"]  # the dead one's heartbeat expired

    serve(job_settings, test)


def test_a_gpu_training_job_waits_while_only_cpu_workers_exist(
    job_settings: Settings, start_worker: Start, tmp_path: Path
) -> None:
    start_worker("w1@test")
    data = tmp_path / "data.yaml"
    data.write_text("path: .\ntrain: images/train\nval: images/val\ntest: images/test\n")

    async def test(client: httpx.AsyncClient) -> None:
        train = await submit(client, {"kind": "train", "data": f"file://{data}"})
        # CPU jobs sent after it run and finish: the worker is free, yet never takes the GPU
        # job.
        score = await submit(
            client,
            {
                "kind": "score",
                "flow": "prod",
                "start": "2026-01-01T00:00:00Z",
                "end": "2026-01-01T00:01:00Z",
            },
        )
        replay = await submit(
            client,
            {
                "kind": "replay",
                "flow": "dev",
                "start": "2026-01-01T00:00:00Z",
                "end": "2026-01-01T00:01:00Z",
                "publish": False,
            },
        )
        done = await wait_for(client, score, lambda j: j["state"] in ("succeeded", "failed"), 120)
        assert done["state"] == "succeeded", done["error"]
        assert done["result"]["summary"]["snapshots"] == 0
        assert done["result"]["artifacts"]["score"].startswith("s3://depotwatch-jobs/jobs/")
        done = await wait_for(client, replay, lambda j: j["state"] in ("succeeded", "failed"), 120)
        assert done["state"] == "succeeded", done["error"]
        assert done["result"]["summary"]["frame_refs"] == 0  # nothing was captured in 2026-01
        waiting = (await client.get(f"/api/v1/jobs/{train}")).json()
        assert waiting["state"] == "queued"
        assert waiting["queue"] == "train.gpu"
        assert waiting["message"] == "waiting for a worker"
        cancelled = (await client.post(f"/api/v1/jobs/{train}/cancel", headers=AUTH)).json()
        assert cancelled["state"] == "cancelled"

    serve(job_settings, test)


def test_bad_jobs_are_refused_and_nothing_is_queued(
    clip: Path, job_settings: Settings, tmp_path: Path
) -> None:
    garbage = tmp_path / "notes.mp4"
    garbage.write_bytes(b"this is not a video " * 100)

    async def test(client: httpx.AsyncClient) -> None:
        async def refused(body: dict[str, Any]) -> list[str]:
            response = await client.post("/api/v1/jobs", json=body, headers=AUTH)
            assert response.status_code == 422, response.text
            return [p["field"] for p in response.json()["problems"]]

        good = _videos(clip, ["cam-n1"])
        assert await refused({"kind": "video", "videos": {"cam-x9": good["cam-n1"]}}) == [
            "videos.cam-x9"
        ]
        assert await refused({"kind": "video", "flow": "nightly", "videos": good}) == ["flow"]
        assert await refused({"kind": "video", "videos": {"cam-n1": "file:///nope.mp4"}}) == [
            "videos.cam-n1"
        ]
        assert await refused({"kind": "replay", "flow": "prod"}) == [
            "body.replay.start",
            "body.replay.end",
        ]
        upload = await client.put(
            "/api/v1/videos/notes.mp4", content=garbage.read_bytes(), headers=AUTH
        )
        assert upload.status_code == 422
        assert "is not a video" in upload.json()["problems"][0]["problem"]
        async with httpx.AsyncClient(base_url=client.base_url) as anonymous:
            no_token = await anonymous.post("/api/v1/jobs", json={"kind": "video", "videos": good})
        assert no_token.status_code == 401
        assert (await client.get("/api/v1/jobs/" + "0" * 32)).status_code == 404
        assert (await client.get("/api/v1/jobs")).json() == {"jobs": [], "total": 0}

    serve(job_settings, test)
    assert JobStore.from_url(job_settings.jobs.redis_url.get_secret_value()).jobs().total == 0


def test_without_redis_the_job_routes_answer_503(stack_settings: Settings) -> None:
    from services.infra.processes import free_ports

    (port,) = free_ports(1, "127.0.0.1")
    jobs = JobsSettings(redis_url=f"redis://127.0.0.1:{port}/0")  # type: ignore[arg-type]
    settings = stack_settings.model_copy(update={"jobs": jobs})

    async def test(client: httpx.AsyncClient) -> None:
        response = await client.get("/api/v1/workers")
        assert response.status_code == 503
        assert "depotwatch infra up" in response.json()["detail"]

    serve(settings, test)
