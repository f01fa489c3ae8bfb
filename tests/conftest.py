from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from chatd.server import RunningServer, serve
from chatd.services.clock import Clock
from tests.etcd import etcd_binary as etcd_binary  # a real etcd for any test (tests/etcd.py)
from tests.etcd import etcd_server as etcd_server
from tests.helpers import make_config

#: start_server(clock=None, **sections) -> RunningServer, e.g. limits={"max_group_members": 3}
ServerFactory = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def start_server(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[ServerFactory]:
    """Start real shards on port 0, each with RocksDB in its own temp dir, in this test's
    Trio run; all are shut down gracefully when the test ends."""
    shutdowns: list[trio.Event] = []
    counter = iter(range(1_000))

    async def start(clock: Clock | None = None, **sections: Any) -> RunningServer:
        shutdown = trio.Event()
        shutdowns.append(shutdown)
        config = make_config(tmp_path / f"data{next(counter)}", **sections)
        running: RunningServer = await nursery.start(
            partial(serve, config, shutdown=shutdown, clock=clock))
        return running

    yield start
    for shutdown in shutdowns:
        shutdown.set()


@pytest.fixture
async def server(start_server: ServerFactory) -> RunningServer:
    return await start_server()


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        yield client


def pytest_addoption(parser: pytest.Parser) -> None:
    # Here, not in tests/cluster/conftest.py: pytest reads options only from the
    # conftest files it loads before parsing the command line (the top one always).
    parser.addoption("--checker-seed", type=int, default=None,
                     help="seed of the fault-injection checker run "
                          "(tests/cluster/test_checker.py; default: CHATD_CHECKER_SEED, "
                          "else a random one, printed)")


#: Files that take a minute or more, scheduled first: with `--no-loadscope-reorder`
#: (addopts) `--dist loadfile` hands files out in collection order (by default it puts
#: the files with the most tests first), and the REST fuzzer, handed out last, ran alone
#: for minutes at the end.
SLOW_FILES = ("web/test_fuzz_rest.py", "web/test_fuzz_rest_random.py",
              "cluster/test_checker.py", "test_bench.py", "cluster/test_found_by_checker.py",
              "web/test_fuzz_ws.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def slow_first(item: pytest.Item) -> int:
        path = item.path.as_posix()
        for rank, name in enumerate(SLOW_FILES):
            if path.endswith("/tests/" + name):
                return rank
        return len(SLOW_FILES)

    items.sort(key=slow_first)  # stable: every other file keeps its order
