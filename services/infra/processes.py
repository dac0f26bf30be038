"""Detached child processes of the embedded infrastructure: ports, start, liveness, stop.

The processes run in their own session (so a Ctrl-C in the terminal that started them does not
reach them, and a stop can signal the whole process group) and outlive the command that started
them; what is needed to find them again lives in :class:`ProcessRecord`, saved in a state file.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class InfraError(RuntimeError):
    """The embedded infrastructure could not be started, stopped or reached (one clear line)."""


@dataclass(frozen=True)
class ProcessRecord:
    """A started process: enough to recognise it again after the starting command has exited."""

    component: str
    pid: int
    binary: str
    ports: dict[str, int]
    log: str
    started_at: float = field(default_factory=time.time)
    start_ticks: int | None = None
    """Kernel start time of the process: tells it apart from a later process with its pid."""

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form for the state file."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessRecord:
        """Inverse of :meth:`to_json`."""
        return cls(
            component=str(data["component"]),
            pid=int(data["pid"]),
            binary=str(data["binary"]),
            ports={str(k): int(v) for k, v in dict(data["ports"]).items()},
            log=str(data["log"]),
            started_at=float(data.get("started_at", 0.0)),
            start_ticks=None if data.get("start_ticks") is None else int(data["start_ticks"]),
        )

    def is_running(self) -> bool:
        """Whether the process is alive and is still the one we started (pids get reused).

        Compared by start time, not command line: a wrapper script that ``exec``s the server
        changes its command line but stays the same process.
        """
        if not pid_alive(self.pid):
            return False
        if self.start_ticks is None:  # no /proc when it was started: trust the pid
            return True
        return process_start_ticks(self.pid) == self.start_ticks


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on ``host:port``.

    SO_REUSEADDR makes a port whose last connections linger in TIME_WAIT count as free, as it
    does for the servers we start (Go and Rust listeners set the same option).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def ports_still_in_use(host: str, ports: list[int], timeout: float) -> list[int]:
    """Wait up to ``timeout`` s for ``ports`` to be free; returns those still taken.

    A killed server's sockets close with its process, but the kernel may hold a port a moment
    longer (orphaned connections finishing their close), and ``up`` right after ``down`` must
    not find it taken.
    """
    deadline = time.monotonic() + timeout
    while True:
        taken = [port for port in ports if port_in_use(host, port)]
        if not taken or time.monotonic() >= deadline:
            return taken
        time.sleep(0.05)


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a TCP connection to ``host:port`` is accepted."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (the caller's child binds it moments later)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that were free a moment ago (held together, so no duplicates)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def _reap(pid: int) -> None:
    # A child of this very process stays a zombie until waited for; reap it so it disappears.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (zombies count as dead)."""
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat_fields(pid)
    return fields is None or fields[0] not in ("Z", "X")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the parenthesised command name, which may itself contain spaces and ")".
    return stat.rsplit(")", 1)[-1].split()


def process_start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (None without /proc)."""
    fields = _stat_fields(pid)
    # starttime is field 22 of /proc/PID/stat; fields[0] here is field 3 (state).
    return int(fields[19]) if fields and len(fields) > 19 else None


def log_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file ("" if it cannot be read)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask Linux to SIGTERM it when the thread that
    # started it dies, even by SIGKILL. Not available elsewhere; then it is simply not done.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


PR_SET_PDEATHSIG = 1


def spawn(
    argv: Sequence[str],
    log_path: Path,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    die_with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` detached (own session, stdin closed), appending its output to ``log_path``.

    ``die_with_parent`` (tests): the process is terminated when the starting thread dies, so
    a test run killed hard leaves no servers behind. Leave it off for servers that must
    outlive the command that started them.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} {' '.join(argv)}\n".encode())
        log.flush()
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group led by ``pid`` (every process :func:`spawn` starts
    leads its own session, so whatever it started goes down with it)."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    except PermissionError:
        # Not allowed to signal the whole group: at least the process itself.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def wait_or_kill(proc: subprocess.Popen[bytes], deadline: float) -> bool:
    """Wait for a child started by :func:`spawn` until ``deadline`` (monotonic), then SIGKILL
    its group; whatever the leader left in its group gets SIGKILL too.

    Returns True when the leader had to be killed; ``proc.returncode`` holds its exit code.
    """
    killed = False
    try:
        proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        signal_group(proc.pid, signal.SIGKILL)
        proc.wait(10)
        killed = True
    signal_group(proc.pid, signal.SIGKILL)
    return killed


def stop_child(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """SIGTERM a child started by :func:`spawn` (its whole group), then :func:`wait_or_kill`.

    For children of this process, whose exit code matters (:func:`stop_process` is for any
    pid, e.g. a server started by an earlier command).
    """
    if proc.poll() is None:
        signal_group(proc.pid, signal.SIGTERM)
    return wait_or_kill(proc, time.monotonic() + timeout)


def stop_process(
    pid: int, timeout: float, sig: signal.Signals = signal.SIGTERM
) -> tuple[bool, float]:
    """Send ``sig`` (SIGTERM) to the process group, wait up to ``timeout`` s, then SIGKILL it.

    Returns (killed, seconds taken); ``killed`` is True when ``sig`` was not enough.
    """
    start = time.monotonic()
    if not pid_alive(pid):
        return False, 0.0
    signal_group(pid, sig)
    deadline = start + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return False, time.monotonic() - start
        time.sleep(0.1)
    signal_group(pid, signal.SIGKILL)
    kill_deadline = time.monotonic() + 10.0
    while pid_alive(pid) and time.monotonic() < kill_deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        raise InfraError(f"process {pid} survived SIGKILL; check it with `ps -p {pid}`")
    return True, time.monotonic() - start
