"""One supervised child process: start, watch, restart with capped backoff, stop its group.

Started with the one process starter, :func:`services.infra.processes.spawn` (also used for the
embedded broker and S3): each child leads its own process group, so stopping it also stops
whatever it started (a GStreamer helper, a Faust worker); nothing is left behind. Output goes
to one log file per service under the data directory. ``depotwatch up`` and ``depotwatch run``
both supervise their children with this class.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.infra.processes import signal_group, spawn, wait_or_kill
from services.runtime.backoff import Backoff

STABLE_AFTER_S = 30.0
"""A child that ran this long before dying is restarted at the initial delay again."""


@dataclass
class ManagedProcess:
    """A child ``depotwatch`` process and its restart bookkeeping (not thread-safe)."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    log_path: Path
    cwd: Path
    backoff: Backoff = field(default_factory=lambda: Backoff(initial_s=1.0, maximum_s=30.0))
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    next_start_at: float | None = None
    last_exit: int | None = None
    stopping: bool = False
    kill_at: float | None = None
    """Set by :meth:`recycle`: SIGKILL the group if this process still runs at this time."""

    @property
    def pid(self) -> int | None:
        """PID of the running child, if any."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    @property
    def running(self) -> bool:
        """Whether the child is alive."""
        return self.pid is not None

    def start(self) -> None:
        """Start the child now (its group is its own)."""
        self.proc = spawn(self.argv, self.log_path, self.cwd, self.env)
        self.started_at = time.monotonic()
        self.next_start_at = None
        self.stopping = False
        self.kill_at = None

    def poll(self, now: float) -> tuple[str, str] | None:
        """Check the child; restart it when due.

        Returns ``("exited" | "restarted", line for the operator)`` or None when nothing happened.
        """
        if self.stopping:
            return None
        if self.proc is not None and self.proc.poll() is None:
            if self.kill_at is not None and now >= self.kill_at:
                self.signal_group(signal.SIGKILL)  # it did not stop on SIGTERM
                self.kill_at = None
            return None
        if self.next_start_at is None:
            # It just died: schedule a restart with backoff.
            code = self.proc.returncode if self.proc is not None else None
            self.last_exit = code
            if self.proc is not None and now - self.started_at >= STABLE_AFTER_S:
                self.backoff.reset()
            delay = self.backoff.next_delay()
            self.next_start_at = now + delay
            return (
                "exited",
                f"{self.name} exited with code {code}; restarting in {delay:.0f}s "
                f"(log {self.log_path})",
            )
        if now >= self.next_start_at:
            self.restarts += 1
            self.start()
            return "restarted", f"{self.name} restarted (restart #{self.restarts})"
        return None

    def signal_group(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the child's whole process group."""
        if self.proc is not None:
            signal_group(self.proc.pid, sig)

    def recycle(self, now: float, kill_after_s: float) -> None:
        """Ask the group to stop (SIGTERM) so that :meth:`poll` restarts it; SIGKILL it from
        :meth:`poll` if it still runs ``kill_after_s`` later."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.kill_at = now + kill_after_s
        self.signal_group(signal.SIGTERM)

    def terminate(self) -> None:
        """Ask the group to stop (SIGTERM) and stop restarting it; see :meth:`finish_stop`."""
        self.stopping = True
        self.next_start_at = None
        if self.proc is not None and self.proc.poll() is None:
            self.signal_group(signal.SIGTERM)

    def finish_stop(self, deadline: float) -> bool:
        """Wait for the leader until ``deadline`` (monotonic), then SIGKILL the group.

        Returns True when the leader had to be killed.
        """
        if self.proc is None:
            return False
        return wait_or_kill(self.proc, deadline)

    def stop(self, timeout: float = 15.0) -> bool:
        """SIGTERM the group, wait up to ``timeout``, then SIGKILL it; True when killed."""
        self.terminate()
        return self.finish_stop(time.monotonic() + timeout)


def depotwatch_argv(args: Sequence[str]) -> list[str]:
    """argv running ``depotwatch ARGS`` with this interpreter (no console script needed)."""
    return [sys.executable, "-m", "services.cli", *args]
