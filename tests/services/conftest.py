"""Services over a real store in a temp dir, with their committer running: no HTTP, no
sockets. `shard.reopen()` closes the store and builds everything again from disk, as a
restart would."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from chatd.domain.models import Session
from chatd.services.context import Services, build_services
from chatd.storage import Store
from tests.helpers import PASSWORD, make_config

_handles = itertools.count(1)


@dataclass
class Shard:
    data_dir: Path
    nursery: trio.Nursery
    services: Services = field(init=False)
    _stop: trio.CancelScope | None = None
    #: Config sections over make_config's, as start_server takes them.
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    async def start(self) -> None:
        config = make_config(self.data_dir, **self.sections)
        store = Store.open(config.storage.data_dir, sync=False)
        self.services = build_services(config, store)
        await self.nursery.start(self.services.committer.run)

    async def stop(self) -> None:
        self.services.committer.close()
        await trio.testing.wait_all_tasks_blocked()
        self.services.store.close()

    async def reopen(self) -> Services:
        await self.stop()
        await self.start()
        return self.services

    async def user(self, name: str = "user") -> Session:
        """A registered user, logged in on one device."""
        accounts = self.services.accounts
        handle = f"{name}{next(_handles)}"
        await accounts.register(handle=handle, password=PASSWORD, display_name=name,
                                client="test")
        login = await accounts.login(handle=handle, password=PASSWORD, device_name="test",
                                     client="test")
        return accounts.authenticate(login.token)


@pytest.fixture
async def shard(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Shard]:
    running = Shard(tmp_path / "data", nursery)
    await running.start()
    yield running
    await running.stop()
