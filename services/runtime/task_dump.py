"""What a stuck asyncio service is waiting on: ``kill -USR1 <pid>`` logs every task's stack.

A stalled worker whose threads all sit idle in ``select`` shows nothing useful to a thread
sampler (py-spy): the answer is which coroutine awaits what. Installed by the state estimator
(Faust) on its event loop.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def await_chain(coro: Any, limit: int = 40) -> list[str]:
    """Where a suspended coroutine waits: each frame of its ``await`` chain, outermost first
    (``Task.get_stack`` shows only the outermost one)."""
    lines: list[str] = []
    while coro is not None and len(lines) < limit:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        frame = frame or getattr(coro, "ag_frame", None)
        if frame is not None:
            code = frame.f_code
            lines.append(f"  {code.co_filename}:{frame.f_lineno} in {code.co_name}")
        nxt = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        coro = nxt or getattr(coro, "ag_await", None)
        if coro is not None and not any(
            hasattr(coro, a) for a in ("cr_frame", "gi_frame", "ag_frame")
        ):
            # ``async for`` awaits an asend object that does not expose its generator (Faust's
            # agents and streams are async generators): find it among its references.
            agen = next((r for r in gc.get_referents(coro) if hasattr(r, "ag_frame")), None)
            if agen is None:
                lines.append(f"  awaiting {coro!r}"[:300])
                break
            coro = agen
    return lines


def task_stacks(loop: asyncio.AbstractEventLoop) -> list[str]:
    """One text block per task of ``loop``: its name and the await chain it is suspended in."""
    blocks = []
    for task in sorted(asyncio.all_tasks(loop), key=lambda t: t.get_name()):
        chain = "\n".join(await_chain(task.get_coro()))
        blocks.append(f"{task.get_name()}:\n{chain}")
    return blocks


def install_task_dump(
    loop: asyncio.AbstractEventLoop, extra: Callable[[], str] | None = None
) -> None:
    """Log every task's stack on SIGUSR1 (main thread's loop only; a no-op elsewhere), and
    what ``extra`` says of the service (e.g. which partitions its consumer fetches)."""

    def dump() -> None:
        blocks = task_stacks(loop)
        if extra is not None:
            try:
                blocks.insert(0, extra())
            except Exception as exc:  # a diagnostic must never take the service down
                blocks.insert(0, f"(extra state unavailable: {exc!r})")
        log.warning("asyncio tasks on SIGUSR1: %d\n%s", len(blocks), "\n".join(blocks))

    try:
        loop.add_signal_handler(signal.SIGUSR1, dump)
    except (RuntimeError, ValueError):  # not the main thread, or no signals here
        log.debug("SIGUSR1 task dump not installed")
