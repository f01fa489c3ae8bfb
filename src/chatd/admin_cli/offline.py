"""The offline door: a stopped shard's data directory, through the same services.

`run_offline` opens the shard's store as `chatd serve` does (the same config, the ring
checked against the one the data was made under), builds the services with
`build_services`, and runs only the group committer: no listener, no mesh, no
background loops (the sweepers would act beyond what the operator asked). Every
command then calls the service method its admin route calls, and its answer is
rendered with the route's own model functions, so both doors print the same thing.
When the command is done the committer drains and the store closes.

A shard alone reaches no other shard. It acts on what it holds: its homed users, the
reports filed at it, its media. What needs another shard is refused up front (an
export, a user or report homed elsewhere) or, for an erasure in a cluster, left in the
state the erase sweeper resumes (see `erase`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from chatd.admin_cli.door import OnlineOnly, Refused, partial_path
from chatd.config import load
from chatd.domain.ring import HashRing
from chatd.errors import ChatdError
from chatd.services.context import Services, build_services
from chatd.services.gdpr import ExportContents, write_zip
from chatd.storage import Store, claim_ring, records
from chatd.storage.errors import StoreInUse
from chatd.storage.meta import RING
from chatd.web import models
from chatd.web.routes_admin_users import DEFAULT_LIST, admin_user, detail
from chatd.web.routes_moderation import DEFAULT_PAGE, account_model, report_model


class ShardRunning(Exception):
    """The data directory is locked by a running shard (or another admin command)."""


class NotAShard(Exception):
    """The directory holds no chatd database."""


async def run_offline(data_dir: Path, config_file: str | None,
                      action: Callable[[OfflineDoor], Awaitable[int]]) -> int:
    """Open the stopped shard at `data_dir`, run `action` with its door, close cleanly.
    Raises ShardRunning, NotAShard, and ConfigError (RingMismatch: the wrong config)."""
    if not (data_dir / "CURRENT").is_file():
        # Store.open would create an empty database: a typo must not make a new shard.
        raise NotAShard(f"{data_dir} holds no chatd database (no CURRENT file): give the "
                        "data directory of a shard (storage.data_dir, `chatd serve --data`)")
    try:
        store = Store.open(str(data_dir))
    except StoreInUse:
        raise ShardRunning(f"the shard at {data_dir} is running (its database is locked): "
                           "use --url to act through it") from None
    services: Services | None = None
    try:
        recorded = store.get(records.META, RING)
        overrides: dict[str, dict[str, Any]] = {"storage": {"data_dir": str(data_dir)}}
        if isinstance(recorded, dict) and isinstance(recorded.get("shard"), str):
            # The database names its shard; the config names every shard of the ring.
            overrides["cluster"] = {"shard": recorded["shard"]}
        config = load(config_file or os.environ.get("CHATD_CONFIG") or None,
                      overrides=overrides)
        ring = HashRing(config.cluster.names, config.cluster.vnodes)
        claim_ring(store, ring.signature(), config.cluster.shard, shards=ring.shards)
        services = build_services(config, store)
        async with trio.open_nursery() as nursery:
            await nursery.start(services.committer.run)
            try:
                return await action(OfflineDoor(services, data_dir))
            finally:
                # Every command queued lands or is refused before the store closes.
                services.committer.close()
    finally:
        with trio.CancelScope(shield=True):
            if services is not None:
                await services.media.blobs.aclose()
        store.close()


def _write_zip_to(contents: ExportContents, out: Path) -> int:
    """The zip into `out` through a temporary name beside it; its size."""
    partial = partial_path(out)
    try:
        write_zip(contents, partial)
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return out.stat().st_size


class OfflineDoor:
    online = False

    def __init__(self, services: Services, data_dir: Path) -> None:
        self._services = services
        self._router = services.router
        self.shard = services.router.shard
        self.where = f"the stopped shard {self.shard} at {data_dir}"

    @property
    def clustered(self) -> bool:
        return len(self._router.shards) > 1

    def _here(self, home: str, what: str) -> None:
        if not self._router.is_local(home):
            raise Refused("not_here", f"{what} is homed on shard {home}, not on {self.shard}: "
                          f"offline, give shard {home}'s data directory, or use --url")

    async def _do(self, call: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await call()
        except ChatdError as exc:
            message = exc.message
            if exc.code.endswith("_unreachable"):
                message += (f" (offline, shard {self.shard} reaches no other shard: use "
                            "--url to act through a running one)")
            raise Refused(exc.code, message, status=exc.status) from None

    # -- users -----------------------------------------------------------------------------

    async def list_users(self, handle: str, after: int, limit: int | None) -> Any:
        found, next_after = self._services.account_admin.list_users(
            after=after, handle_prefix=handle, limit=limit or DEFAULT_LIST)
        return models.AdminUsers([admin_user(user, state) for user, state in found],
                                 next_after or None).to_json()

    async def show_user(self, user_id: int) -> Any:
        self._here(self._router.home_of_user(user_id), f"user {user_id}")
        return detail(await self._do(lambda: self._services.gdpr.show(user_id))).to_json()

    async def set_active(self, user_id: int, active: bool) -> Any:
        self._here(self._router.home_of_user(user_id), f"user {user_id}")
        gdpr = self._services.gdpr
        await self._do(lambda: gdpr.reactivate(user_id) if active else gdpr.deactivate(user_id))
        return await self.show_user(user_id)

    async def erase(self, user_id: int) -> Any:
        """One shard: the whole erasure, as the route runs it. A cluster: only the home's
        step (services/account_admin.py `begin_erase`: the account marked "erasing",
        its profile a tombstone, handle freed, devices and tokens revoked). Every other
        step needs every shard at once (`Gdpr.finish_erase` stops at the first it cannot
        reach), so it is left to the erase sweeper, which finishes every account marked
        "erasing" when this shard runs again, or to an erase through a running shard."""
        self._here(self._router.home_of_user(user_id), f"user {user_id}")
        if not self.clustered:
            status = await self._do(lambda: self._services.gdpr.erase(user_id, None))
            return {"status": status}
        state = await self._do(lambda: self._services.account_admin.begin_erase(user_id))
        if state.erased_at:
            return {"status": "erased"}
        return {"status": "erasing", "left": {
            "shards": list(self._router.shards),
            "steps": ["uploads and exports", "memberships and messages in conversations"],
            "finished_by": "the erase sweeper when this shard runs again, or "
                           "`chatd admin users erase` through a running shard (--url)"}}

    async def export(self, user_id: int, out: Path, timeout: float) -> int:  # noqa: ASYNC109
        if self.clustered:
            raise OnlineOnly(
                "an export gathers the user's data from every shard "
                f"({', '.join(self._router.shards)}) and offline only {self.shard} can be "
                "read: export through a running shard (--url)")
        self._here(self._router.home_of_user(user_id), f"user {user_id}")
        gdpr = self._services.gdpr
        await self.show_user(user_id)  # 404 for nobody, as the route
        # The zip goes straight to OUT: the route's ExportStore exists to serve a zip
        # later over HTTP, which an operator holding the disk does not need.
        with tempfile.TemporaryDirectory(prefix=".chatd-export-", dir=out.parent) as scratch:
            contents = await self._do(lambda: gdpr.gather(user_id, Path(scratch)))
            # Compression is CPU: in a worker thread, as the route's exports are.
            return await trio.to_thread.run_sync(_write_zip_to, contents, out)

    # -- moderation ------------------------------------------------------------------------

    async def reports(self, status: str, after: int, limit: int | None) -> Any:
        listing = await self._do(lambda: self._services.reports.list_reports(
            status, after, limit or DEFAULT_PAGE))
        return models.Reports(
            [report_model(report) for report in listing.items], listing.unreachable,
            listing.items[-1].report_id if listing.more and listing.items else None).to_json()

    async def resolve(self, report_id: int, action: str, note: str) -> Any:
        # A report's id names the shard it was filed at, as a user's does.
        self._here(self._router.home_of_user(report_id), f"report {report_id}")
        report = await self._do(lambda: self._services.reports.resolve(report_id, action, note))
        return report_model(report).to_json()

    async def abuse_queue(self, after: int, limit: int | None) -> Any:
        listing = await self._do(lambda: self._services.reports.queue(
            after, limit or DEFAULT_PAGE))
        return models.AbuseQueue(
            [account_model(state) for state in listing.items], listing.unreachable,
            listing.items[-1].user_id if listing.more and listing.items else None).to_json()

    async def set_limited(self, user_id: int, limited: bool, note: str) -> Any:
        self._here(self._router.home_of_user(user_id), f"user {user_id}")
        state = await self._do(lambda: self._services.reports.limit(user_id, note,
                                                                    limited=limited))
        return account_model(state).to_json()

    async def quarantine(self, sha256: str, reason: str) -> None:
        await self._do(lambda: self._services.media.quarantine(sha256, reason))

    # -- replication: about live shards, nothing to do on a stopped one ---------------------

    async def ranges(self) -> Any:
        raise OnlineOnly("status shows how the running shards see each range: use --url")

    async def promote(self, range_of: str) -> Any:
        raise OnlineOnly("promote changes who serves a range among running shards: use --url")

    async def rebalance(self) -> Any:
        raise OnlineOnly("rebalance hands ranges back between running shards: use --url")
