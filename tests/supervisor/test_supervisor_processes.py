"""The supervisor with stand-in services: restarts, hot camera changes, nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from schemas.facility import load_facility
from services.supervisor.plan import PlanOptions, ServiceSpec
from services.supervisor.supervisor import (
    AlreadyRunningError,
    Child,
    Supervisor,
    reap_leftovers,
)

REPO = Path(__file__).resolve().parents[2]
FAKE = Path(__file__).with_name("fake_service.py")

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (its parent reaps it later).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _wait(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout:.0f}s")


def _write_config(path: Path, enabled: set[str]) -> None:
    data = yaml.safe_load((REPO / "facility.yaml").read_text())
    for cam in data["cameras"]:
        cam["enabled"] = cam["id"] in enabled
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Supervisor, Path, list[str]]]:
    cfg_path = tmp_path / "facility.yaml"
    _write_config(cfg_path, {"cam-s1", "cam-s2"})
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    lines: list[str] = []

    def argv_for(spec: ServiceSpec) -> list[str]:
        return [sys.executable, str(FAKE), spec.name]

    sup = Supervisor(
        load_facility(cfg_path),
        PlanOptions(config_path=cfg_path, simulate=False, flows=["prod"], dashboard=False),
        {**os.environ, "FAKE_PID_DIR": str(pid_dir)},
        tmp_path / "data",
        lines.append,
        # Only captures and the aggregator "exist" here; the rest must be skipped, not fatal.
        available=lambda cmd: cmd in ("capture", "aggregator"),
        argv_for=argv_for,
        config_check_s=0.2,
        status_every_s=0.5,
        unhealthy_restart_s=1.0,
    )
    thread = threading.Thread(target=lambda: (sup.start_all(), sup.run()), daemon=True)
    thread.start()
    try:
        yield sup, cfg_path, lines
    finally:
        sup.stop_event.set()
        thread.join(30)
        sup.stop(timeout=5)


def _pids(pid_dir: Path) -> list[int]:
    return [int(p) for f in pid_dir.glob("*.pids") for p in f.read_text().split()]


def test_supervises_restarts_hot_changes_and_leaves_nothing(
    running: tuple[Supervisor, Path, list[str]],
) -> None:
    sup, cfg_path, lines = running
    status_path = sup.status_path
    _wait(lambda: len(sup.children) == 3, 20, "aggregator + 2 captures started")
    assert any("skipping position-estimator/prod" in ln for ln in lines)
    _wait(
        lambda: (
            status_path.exists()
            and all(
                s["state"] == "up" and (s["rate"] or not s["name"].startswith("capture/"))
                for s in json.loads(status_path.read_text())["services"]
            )
        ),
        30,
        "every service up, captures with a frame rate",
    )
    status = json.loads(status_path.read_text())
    assert {s["name"] for s in status["services"]} == {
        "aggregator",
        "capture/cam-s1",
        "capture/cam-s2",
    }
    assert "position-estimator/prod" in status["skipped"]

    # A crash is restarted (with backoff) without touching the others.
    other_pid = sup.children["capture/cam-s2"].process.pid
    victim = sup.children["capture/cam-s1"].process
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    _wait(lambda: victim.restarts == 1 and victim.running, 20, "crashed capture restarted")
    assert sup.children["capture/cam-s2"].process.pid == other_pid

    # A broken edit is reported line by line and changes nothing.
    cfg_path.write_text(cfg_path.read_text().replace("fps: 2", "fps: -1", 1))
    _wait(
        lambda: any("config rejected" in ln and "fps" in ln for ln in lines),
        10,
        "config error reported",
    )
    assert set(sup.children) == {"aggregator", "capture/cam-s1", "capture/cam-s2"}

    # Add cam-n1, disable cam-s2: only those captures start and stop.
    agg_pid = sup.children["aggregator"].process.pid
    s1_pid = sup.children["capture/cam-s1"].process.pid
    _write_config(cfg_path, {"cam-s1", "cam-n1"})
    _wait(
        lambda: "capture/cam-n1" in sup.children and "capture/cam-s2" not in sup.children,
        10,
        "camera change",
    )
    assert any("added cam-n1; stopped cam-s2" in ln for ln in lines)
    assert sup.children["aggregator"].process.pid == agg_pid
    assert sup.children["capture/cam-s1"].process.pid == s1_pid
    _wait(lambda: sup.children["capture/cam-n1"].process.running, 10, "new capture running")

    # Shutdown: every child and grandchild (which ignores SIGTERM) is gone.
    pid_dir = Path(sup.base_env["FAKE_PID_DIR"])
    _wait(lambda: len(_pids(pid_dir)) >= 8, 10, "pid files written")
    sup.stop_event.set()
    sup.stop(timeout=5)
    pids = _pids(pid_dir)
    _wait(lambda: not any(_alive(p) for p in pids), 10, "no process left behind")


def _sleeper(*tag: str) -> subprocess.Popen[bytes]:
    """A process whose command line looks like a depotwatch service (``services.cli ...``)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "services.cli", *tag],
        start_new_session=True,
    )
    # Until exec, /proc/<pid>/cmdline still shows the parent's command line.
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    _wait(lambda: b"services.cli" in cmdline.read_bytes(), 10, "sleeper exec'd")
    return proc


def test_leftovers_of_a_killed_up_are_stopped(tmp_path: Path) -> None:
    leftover = _sleeper("capture")
    unrelated = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        status = tmp_path / "status.json"
        status.write_text(
            json.dumps(
                {
                    "pid": 0,
                    "services": [
                        {"name": "capture/cam-s1", "pid": leftover.pid},
                        {"name": "not-ours", "pid": unrelated.pid},
                    ],
                }
            )
        )
        lines: list[str] = []
        assert reap_leftovers(status, lines.append) == 1
        assert leftover.wait(10) is not None
        assert unrelated.poll() is None  # a pid that is not a depotwatch service is left alone
        assert "capture/cam-s1" in lines[0]
    finally:
        for p in (leftover, unrelated):
            p.kill()
            p.wait(10)


def test_a_second_up_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    other = _sleeper("up")
    try:
        status = tmp_path / "status.json"
        status.write_text(json.dumps({"pid": other.pid, "services": []}))
        with pytest.raises(AlreadyRunningError, match="--data-dir"):
            reap_leftovers(status, print)
    finally:
        other.kill()
        other.wait(10)


def _started_aggregator(sup: Supervisor) -> tuple[Child, int | None, Path]:
    """The stand-in aggregator once started: its child record, first pid, marker directory."""
    _wait(lambda: "aggregator" in sup.children and sup.children["aggregator"].process.pid, 20,
          "aggregator started")  # fmt: skip
    child = sup.children["aggregator"]
    return child, child.process.pid, Path(sup.base_env["FAKE_PID_DIR"])


def test_a_service_only_behind_is_reported_but_not_restarted(
    running: tuple[Supervisor, Path, list[str]],
) -> None:
    """Field failure (60-minute soak, 2026-12-02): a state estimator making progress but
    behind on a saturated machine was restarted every 5 minutes, and each restart made it
    worse. Behind is reported (/healthz 503), not restarted (/livez 200)."""
    sup, _, lines = running
    child, first, pid_dir = _started_aggregator(sup)
    (pid_dir / "aggregator.behind").touch()
    port = child.metrics_port
    assert port is not None
    _wait(lambda: _status(port, "/healthz") == 503, 20, "/healthz reports behind")
    assert _status(port, "/livez") == 200
    deadline = time.monotonic() + 4 * sup.unhealthy_restart_s + 2  # well past the limit
    while time.monotonic() < deadline:
        assert child.process.pid == first, "restarted for being behind"
        time.sleep(0.2)
    assert not any("unhealthy for" in ln for ln in lines)


def _status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0  # not serving yet


def test_a_service_alive_but_unhealthy_is_restarted(
    running: tuple[Supervisor, Path, list[str]],
) -> None:
    """Field failure (60-minute soak): the state estimator stopped fusing, its /healthz said so
    (503, "stalled") for 20 minutes, and `up` left it running because it had not crashed."""
    sup, _, lines = running
    child, first, pid_dir = _started_aggregator(sup)
    time.sleep(2.0)  # healthy for a while: nothing happens
    assert child.process.pid == first
    (pid_dir / "aggregator.unhealthy").touch()
    _wait(lambda: any("aggregator unhealthy for" in ln for ln in lines), 20, "restart decided")
    (pid_dir / "aggregator.unhealthy").unlink()
    _wait(lambda: child.process.pid not in (None, first), 30, "aggregator restarted")
    assert any("(stuck: nothing done for 99s); restarting it" in ln for ln in lines)
    assert not _alive(first)


def test_a_recycled_process_that_ignores_sigterm_is_killed_at_its_deadline(
    tmp_path: Path,
) -> None:
    """The unhealthy-restart path: SIGTERM now; a process that ignores it (a hung service) is
    SIGKILLed by the first poll at or after the deadline, never before, and then restarted."""
    from services.supervisor.process import ManagedProcess

    ready = tmp_path / "ready"
    code = (
        "import signal, sys, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"pathlib.Path({str(ready)!r}).write_text('up'); time.sleep(120)"
    )
    proc = ManagedProcess(
        name="stubborn",
        argv=[sys.executable, "-c", code],
        env=dict(os.environ),
        log_path=tmp_path / "stubborn.log",
        cwd=tmp_path,
    )
    proc.start()
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline, "the child did not start within 30 s"
            time.sleep(0.05)
        now = 1000.0
        proc.recycle(now, kill_after_s=5.0)
        assert proc.poll(now + 4.9) is None
        assert proc.proc is not None
        with pytest.raises(subprocess.TimeoutExpired):
            proc.proc.wait(0.5)  # SIGTERM was ignored: it still runs
        assert proc.poll(now + 5.0) is None  # the deadline: SIGKILL
        assert proc.proc.wait(10) == -signal.SIGKILL
        event = proc.poll(now + 5.1)
        assert event is not None
        assert event[0] == "exited"
    finally:
        proc.signal_group(signal.SIGKILL)
