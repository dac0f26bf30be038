"""Job tests: a clean Redis database of the session's embedded stack per test."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.infra import EmbeddedInfra

# The web app harness of the dashboard tests serves the jobs API here too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dashboard"))

_DATABASES = itertools.cycle(range(1, 16))


@pytest.fixture
def redis_url(embedded_stack: EmbeddedInfra) -> Iterator[str]:
    """URL of an emptied Redis database (1-15; the stack's own jobs use 0)."""
    url = embedded_stack.redis_url.rsplit("/", 1)[0] + f"/{next(_DATABASES)}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()
