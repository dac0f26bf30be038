"""A minimal Chrome DevTools Protocol client for headless Chromium (tests and benchmarks).

Starts Debian's ``chromium`` headless with a DevTools port, attaches to its page over a
WebSocket (aiohttp) and offers navigate / evaluate / screenshot. No Selenium, no npm.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium_binary() -> str | None:
    """Path of a Chromium binary, or None."""
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """One headless Chromium with one page; use as an async context manager."""

    def __init__(
        self, width: int = 1400, height: int = 1000, extra_args: Sequence[str] = ()
    ) -> None:
        self.width, self.height = width, height
        self.extra_args = list(extra_args)
        self._profile = tempfile.mkdtemp(prefix="depotwatch-chromium-")
        self._proc: subprocess.Popen[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> Chromium:
        binary = chromium_binary()
        assert binary, "chromium not installed: apt-get install chromium"
        self._proc = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={self._profile}",
                f"--window-size={self.width},{self.height}",
                *self.extra_args,
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        port = await asyncio.get_running_loop().run_in_executor(None, self._devtools_port)
        self._session = aiohttp.ClientSession()
        deadline = time.monotonic() + 20
        while True:
            async with self._session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                pages = [t for t in await resp.json() if t.get("type") == "page"]
            if pages or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert pages, "chromium opened no page"
        self._ws = await self._session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        return self

    @property
    def pid(self) -> int:
        """The browser's process id (its helpers are its children)."""
        assert self._proc is not None, "not started"
        return self._proc.pid

    def _devtools_port(self) -> int:
        assert self._proc is not None
        assert self._proc.stderr is not None
        deadline = time.monotonic() + 30
        seen = []
        while time.monotonic() < deadline:
            line = self._proc.stderr.readline().decode(errors="replace")
            if not line and self._proc.poll() is not None:
                break
            seen.append(line)
            m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            if m:
                return int(m.group(1))
        raise AssertionError("chromium did not open its DevTools port:\n" + "".join(seen[-20:]))

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
            if self._proc.stderr is not None:
                self._proc.stderr.close()
            # Chromium's helpers (renderer, crashpad) live on in the process group and may
            # still write into the profile after the browser itself has gone.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        self._remove_profile()

    def _remove_profile(self, timeout_s: float = 10.0) -> None:
        """Delete the profile folder, retrying while a dying helper still writes into it."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                shutil.rmtree(self._profile)
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a DevTools method and return its result (events in between are skipped)."""
        assert self._ws is not None
        msg_id = next(self._ids)
        await self._ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = await asyncio.wait_for(self._ws.receive(), timeout=30)
            if reply.type != aiohttp.WSMsgType.TEXT:
                raise AssertionError(f"DevTools connection closed: {reply}")
            data = json.loads(reply.data)
            if data.get("id") == msg_id:
                if "error" in data:
                    raise AssertionError(f"{method} failed: {data['error']}")
                return dict(data.get("result", {}))

    async def navigate(self, url: str) -> None:
        """Open ``url`` in the page."""
        await self.send("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        """Value of a JavaScript expression in the page."""
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} raised: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float, interval: float = 0.2) -> Any:
        """Poll a JavaScript expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(interval)
        raise AssertionError(f"{expression!r} still {value!r} after {timeout:.0f}s")

    async def screenshot(self, path: Path) -> Path:
        """A PNG of the viewport."""
        result = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(result["data"]))
        return path
