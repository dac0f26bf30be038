"""``kill -USR1`` on a stuck asyncio service logs where each task waits."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from services.runtime.task_dump import install_task_dump, task_stacks


async def _inner(event: asyncio.Event) -> None:
    await event.wait()


async def _outer(event: asyncio.Event) -> None:
    await _inner(event)


def _stack_of(waiter: Callable[[asyncio.Event], Awaitable[None]], name: str) -> str:
    """The dumped block of a task running ``waiter`` while it waits on an event."""

    async def main() -> list[str]:
        event = asyncio.Event()
        task = asyncio.create_task(waiter(event), name=name)
        await asyncio.sleep(0)
        blocks = [b for b in task_stacks(asyncio.get_running_loop()) if b.startswith(name)]
        event.set()
        await task
        return blocks

    [block] = asyncio.run(main())
    return block


def test_a_tasks_whole_await_chain_is_shown() -> None:
    block = _stack_of(_outer, "stuck-agent")
    lines = block.splitlines()
    assert lines[0] == "stuck-agent:"
    assert "in _outer" in lines[1]
    assert "in _inner" in lines[2]
    assert "in wait" in lines[3]  # asyncio.Event.wait: what the agent is blocked on


def test_sigusr1_logs_every_task(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        install_task_dump(asyncio.get_running_loop())
        event = asyncio.Event()
        task = asyncio.create_task(_outer(event), name="stuck-agent")
        await asyncio.sleep(0)
        os.kill(os.getpid(), signal.SIGUSR1)
        for _ in range(100):  # the handler runs on the loop soon after the signal
            if "stuck-agent" in caplog.text:
                break
            await asyncio.sleep(0.01)
        event.set()
        await task

    with caplog.at_level(logging.WARNING, logger="services.runtime.task_dump"):
        asyncio.run(main())
    assert "asyncio tasks on SIGUSR1" in caplog.text
    assert "in _inner" in caplog.text


def test_a_failing_extra_state_does_not_stop_the_dump(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> str:
        raise RuntimeError("consumer not started")

    async def main() -> None:
        install_task_dump(asyncio.get_running_loop(), broken)
        os.kill(os.getpid(), signal.SIGUSR1)
        for _ in range(100):
            if "asyncio tasks on SIGUSR1" in caplog.text:
                break
            await asyncio.sleep(0.01)

    with caplog.at_level(logging.WARNING, logger="services.runtime.task_dump"):
        asyncio.run(main())
    assert "extra state unavailable: RuntimeError('consumer not started')" in caplog.text


async def _events(event: asyncio.Event) -> AsyncIterator[int]:
    await event.wait()
    yield 1


async def _agent(event: asyncio.Event) -> None:
    async for _ in _events(event):
        pass


def test_an_agent_iterating_an_async_generator_shows_where_the_generator_waits() -> None:
    block = _stack_of(_agent, "agent")
    assert "in _agent" in block
    assert "in _events" in block  # inside the stream, not just "awaiting <asend>"
