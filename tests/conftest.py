from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from chatd.server import RunningServer, serve
from tests.helpers import make_config


@pytest.fixture
async def server(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A real shard on port 0 with RocksDB in a temp dir, in this test's Trio run."""
    shutdown = trio.Event()
    running: RunningServer = await nursery.start(
        partial(serve, make_config(tmp_path / "data"), shutdown=shutdown))
    yield running
    shutdown.set()


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        yield client
