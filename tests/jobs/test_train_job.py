"""A `train` job end to end on CPU: a tiny simulator dataset in S3, one epoch, weights to S3."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis

from schemas.facility import load_facility
from schemas.jobs import TrainJob
from services.jobs.kinds import kind_runners
from services.jobs.runner import run_job
from services.jobs.store import JobStore
from services.runtime.settings import JobsSettings, Settings
from services.runtime.storage import ObjectStore

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One seed of one scenario per split, one tick each: a few dozen images."""
    from services.simulator.dataset import SplitPlan, write_dataset

    out = tmp_path_factory.mktemp("dataset")
    plans = [
        SplitPlan("train", ("train-busy",), 1, 1),
        SplitPlan("val", ("val-mixed",), 1, 1),
        SplitPlan("test", ("test-dim",), 1, 1),
    ]
    write_dataset(load_facility(REPO / "facility.yaml"), out, plans)
    return out


def test_a_cpu_training_job_resumes_from_its_last_epoch_and_stores_weights(
    dataset: Path, stack_settings: Settings, redis_url: str, unique_name
) -> None:
    settings = stack_settings.model_copy(update={"jobs": JobsSettings(redis_url=redis_url)})  # type: ignore[arg-type]
    bucket = settings.jobs.results_bucket
    s3 = ObjectStore(settings.s3.model_copy(update={"bucket": bucket}))
    s3.ensure_bucket()
    prefix = unique_name("datasets")
    for path in sorted(p for p in dataset.rglob("*") if p.is_file()):
        s3.put_file(f"{prefix}/{path.relative_to(dataset)}", path)
    store = JobStore(redis.Redis.from_url(redis_url))
    job = store.create(
        TrainJob(
            data=f"s3://{bucket}/{prefix}/data.yaml", device="cpu", epochs=2, imgsz=64, batch=4
        )
    )
    # The first worker is told to stop (SIGTERM) once epoch 1 is saved to S3.
    stopping = threading.Event()

    def stop_after_first_epoch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not stopping.is_set():
            if (store.get(job.id).checkpoint or {}).get("epoch") == 1:
                stopping.set()
            time.sleep(0.05)

    watcher = threading.Thread(target=stop_after_first_epoch, daemon=True)
    watcher.start()
    first = run_job(job.id, store, settings, "w1", kind_runners(["train"]), stopping)
    watcher.join(5)
    assert first == "requeue"
    assert store.get(job.id).state == "queued"
    # Another worker resumes it at epoch 2 from the last.pt saved in S3.
    outcome = run_job(job.id, store, settings, "w2", kind_runners(["train"]), threading.Event())
    done = store.get(job.id)
    assert outcome == "done"
    assert done.state == "succeeded", done.error
    assert done.result is not None
    weights = done.result.artifacts["weights"]
    assert weights.startswith(f"s3://{bucket}/jobs/{job.id}/")
    assert s3.exists(weights.removeprefix(f"s3://{bucket}/"))
    assert "per_class" in done.result.summary["test"]
    assert done.result.summary["device"] == "cpu"
    assert done.result.summary["resumed_at_epoch"] == 1
    assert done.result.summary["epochs_run"] == [2]  # epoch 1 was not trained again
    assert done.attempts == 2
