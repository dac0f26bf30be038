"""Mutation check of the riskiest loops: break each failure branch and watch a test go red.

Each mutant below disables one branch of ``services/runtime/frame_stream.py`` or
``services/aggregator/service.py`` (a broker rejection ignored, the in-flight bound removed, a
store outage blamed on the frame...). The module's fast tests run in a fresh interpreter with
the mutant loaded in place of the module; every mutant must make them fail. A mutant that
survives means a failure branch no test exercises (issue 12: disabling the broker-rejection
check and the in-flight limit once left every related test green).

The snippet each mutant replaces must occur exactly once in the module, so an edit to the
module that moves a branch fails here until the list is brought along.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

FRAME_STREAM = (
    "services.runtime.frame_stream",
    ["tests/runtime/test_frame_stream_faults.py", "tests/runtime/test_frame_stream.py"],
)
AGGREGATOR = ("services.aggregator.service", ["tests/aggregator/test_service.py"])

# (what the mutant breaks, module, snippet, replacement)
MUTANTS: list[tuple[str, tuple[str, list[str]], str, str]] = [
    ("broker rejection ignored", FRAME_STREAM, "            if batch.errors:", "            if 0:"),
    (
        "no bound on batches in flight",
        FRAME_STREAM,
        "if len(self._in_flight) > self.config.max_in_flight:",
        "if 0:",
    ),
    (
        "offsets done before acks",
        FRAME_STREAM,
        "while self._in_flight and self._in_flight[0].waiting <= 0:",
        "while self._in_flight:",
    ),
    ("ack wait never gives up", FRAME_STREAM, "if time.monotonic() > deadline:", "if 0:"),
    (
        "store outage blamed on the frame",
        FRAME_STREAM,
        "while any(isinstance(res, StorageError) for res in results):",
        "while 0:",
    ),
    (
        "missing object crashes the loop",
        FRAME_STREAM,
        'return f"frame object missing: {exc}"',
        "raise",
    ),
    (
        "corrupt object crashes the loop",
        FRAME_STREAM,
        'return f"frame object corrupt: {exc.reason}"',
        "raise",
    ),
    ("lost outcomes not noticed", FRAME_STREAM, "if len(outcomes) != len(frames):", "if 0:"),
    ("handler rejection ignored", FRAME_STREAM, "if isinstance(outcome, Rejected):", "if 0:"),
    (
        "dead letters never sent",
        FRAME_STREAM,
        "self.consumer.dead_letter(r.raw, reason, mark_done=False)",
        "pass",
    ),
    (
        "shutdown during an outage goes on",
        FRAME_STREAM,
        "return 0  # shutdown while the store was down: nothing of it is marked done",
        "continue",
    ),
    (
        "read-ahead never supersedes",
        FRAME_STREAM,
        'if self.config.mode == "live" and self._ahead is not None:',
        "if 0:",
    ),
    ("consumer left open", FRAME_STREAM, "        self.consumer.close()\n", "        pass\n"),
    (
        "refused refs not re-sent",
        AGGREGATOR,
        "self._retry_refs.append(_PendingRef(pending.ref, pending.attempt + 1))",
        "pass",
    ),
    (
        "fenced producer kept",
        AGGREGATOR,
        "self._replace_producer.set()",
        "pass",
    ),
    (
        "no bound on refs awaiting acks",
        AGGREGATOR,
        "if self._pending < self.settings.pending_refs or self._workers_done.is_set():",
        "if 1:",
    ),
    (
        "kafka failure not reported",
        AGGREGATOR,
        "                self._kafka_failing_since = self.clock()\n",
        "                pass\n",
    ),
    (
        "store failure not reported",
        AGGREGATOR,
        "                    self._store_failing_since = self.clock()\n",
        "                    pass\n",
    ),
    (
        "ref sent before its object is stored",
        AGGREGATOR,
        "                stored = self.store.put(key, frame.jpeg, "
        'content_type="image/jpeg")\n                break',
        "                self._publish(_PendingRef(frame_ref(h, self.store.settings.bucket, key, "
        "len(frame.jpeg), '0' * 64), 0))\n"
        '                stored = self.store.put(key, frame.jpeg, content_type="image/jpeg")\n'
        "                break",
    ),
    (
        "bucket not retried",
        AGGREGATOR,
        "                self.shutdown.wait(delay)\n",
        "                return\n",
    ),
    (
        "duplicates stored twice",
        AGGREGATOR,
        "if not self._dedupe.first_time(cid, frame.header.seq):",
        "if 0:",
    ),
]

# One interpreter imports the heavy libraries once, then forks a child per mutant; the child
# registers the mutant under the module's name before any test imports it and runs pytest.
# The parent never imports the mutated modules (their metrics would be registered twice).
RUNNER = """
import importlib.util, json, os, sys, time, traceback
import cv2, numpy, confluent_kafka, prometheus_client, pydantic, pytest  # noqa: F401
import schemas.frames, services.runtime.kafka, services.runtime.storage  # noqa: F401

def child(job):
    out = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(out, 1)
    os.dup2(out, 2)
    code = 3
    try:
        name, path = job["module"], job["path"]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        code = int(pytest.main(
            ["-q", "-x", "-p", "no:cacheprovider", "--timeout", "8", *job["tests"]]
        ))
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

jobs = json.loads(open(sys.argv[1]).read())
parallel = int(sys.argv[2])
results, running = {}, {}
while jobs or running:
    while jobs and len(running) < parallel:
        job = jobs.pop(0)
        pid = os.fork()
        if pid == 0:
            child(job)
        running[pid] = (job["id"], time.monotonic())
    pid, status = os.wait()
    what, t0 = running.pop(pid)
    print(what, round(time.monotonic() - t0, 1), file=sys.stderr)
    results[what] = os.waitstatus_to_exitcode(status)
print(json.dumps(results))
"""
PARALLEL = 4
"""Mutants run at once: most of a mutant's time is a test waiting for what never comes."""


def _source(module: str) -> str:
    return (REPO / (module.replace(".", "/") + ".py")).read_text()


def _run(jobs: list[dict[str, object]], tmp: Path, timeout_s: float) -> dict[str, int]:
    spec = tmp / "jobs.json"
    spec.write_text(json.dumps(jobs))
    run = subprocess.run(
        [sys.executable, "-c", RUNNER, str(spec), str(PARALLEL)],
        cwd=REPO, capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    results: dict[str, int] = json.loads(run.stdout.strip().splitlines()[-1])
    return results


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str]]:
    """Exit status and log of each mutant's test run, plus the unmutated modules' ("original")."""
    tmp = tmp_path_factory.mktemp("mutants")
    jobs: list[dict[str, object]] = []
    for module, tests in (FRAME_STREAM, AGGREGATOR):
        path = tmp / f"original-{module}.py"
        path.write_text(_source(module))
        jobs.append(
            {"id": f"original {module}", "module": module, "path": str(path), "tests": tests}
        )
    for i, (what, (module, tests), snippet, replacement) in enumerate(MUTANTS):
        source = _source(module)
        if source.count(snippet) != 1:
            continue  # reported by the mutant's own test
        path = tmp / f"mutant-{i}.py"
        path.write_text(source.replace(snippet, replacement))
        jobs.append({"id": what, "module": module, "path": str(path), "tests": tests})
    for i, job in enumerate(jobs):
        job["log"] = str(tmp / f"job-{i}.log")
    codes = _run(jobs, tmp, timeout_s=30.0 * len(jobs))
    return {
        str(job["id"]): (codes[str(job["id"])], Path(str(job["log"])).read_text()[-2000:])
        for job in jobs
    }


@pytest.mark.parametrize("module", [FRAME_STREAM[0], AGGREGATOR[0]])
def test_the_unmutated_modules_pass_their_tests_under_the_runner(
    outcomes: dict[str, tuple[int, str]], module: str
) -> None:
    """The runner itself works: with the original module loaded its way, the tests pass."""
    code, log = outcomes[f"original {module}"]
    assert code == 0, log


@pytest.mark.parametrize(
    ("what", "target", "snippet", "replacement"), MUTANTS, ids=[m[0] for m in MUTANTS]
)
def test_every_mutant_of_a_failure_branch_fails_a_test(
    outcomes: dict[str, tuple[int, str]],
    what: str,
    target: tuple[str, list[str]],
    snippet: str,
    replacement: str,
) -> None:
    module, _ = target
    assert _source(module).count(snippet) == 1, f"{what}: the snippet is no longer in {module} once"
    code, log = outcomes[what]
    assert code == 1, f"mutant survived ({what}): {module} with this branch broken passes\n{log}"
