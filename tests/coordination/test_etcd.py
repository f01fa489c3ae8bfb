"""EtcdClient and Watch against a real etcd (tests/etcd.py): keys, txns, leases,
watches across restarts, endpoint failover, auth."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from chatd.coordination import (
    Compare,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    KeyValue,
    Op,
    WatchCompacted,
    WatchEvent,
)
from tests.etcd import EtcdServer, EtcdTls
from tests.helpers import free_port


@pytest.fixture
async def etcd(etcd_server: EtcdServer) -> AsyncIterator[EtcdClient]:
    async with EtcdClient([etcd_server.url]) as client:
        yield client


class Blackhole:
    """A TCP listener that accepts connections and never answers: a stalled endpoint."""

    def __init__(self) -> None:
        self.accepted = 0
        self.port = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._hold, listeners)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _hold(self, stream: trio.SocketStream) -> None:
        self.accepted += 1
        async with stream:
            await trio.sleep_forever()


class NotEtcd:
    """A listener that answers every request with HTTP 502 and a page of text, as a
    broken proxy in front of etcd would."""

    def __init__(self) -> None:
        self.port = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._answer, listeners)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _answer(self, stream: trio.SocketStream) -> None:
        async with stream:
            request = b""
            while b"\r\n\r\n" not in request:
                request += await stream.receive_some(65536) or b"\r\n\r\n"
            await stream.send_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 11\r\n"
                                  b"Connection: close\r\n\r\nBad Gateway")


async def gateway_post(server: EtcdServer, path: str, body: dict[str, Any],
                       token: str | None = None) -> dict[str, Any]:
    """A raw call to etcd, for what the client under test does not do (compaction,
    enabling auth)."""
    headers = {"Authorization": token} if token else {}
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.post(server.url + path, json=body, headers=headers)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


# -- keys ----------------------------------------------------------------------------------


async def test_put_get_delete(etcd: EtcdClient) -> None:
    assert await etcd.get("k") is None
    first = await etcd.put("k", b"\x00\xffbytes")
    second = await etcd.put("k", b"again")
    assert second > first
    kv = await etcd.get("k")
    assert kv == KeyValue(key="k", value=b"again", create_revision=first,
                          mod_revision=second, version=2, lease=0)
    await etcd.put("empty", b"")
    assert (await etcd.get("empty") or pytest.fail("no key")).value == b""
    assert await etcd.delete("k") == 1
    assert await etcd.delete("k") == 0
    assert await etcd.get("k") is None


async def test_keys_are_text_of_any_kind(etcd: EtcdClient) -> None:
    for key in ("ключ/☃", "a b\nc", "bad\udcffutf8"):  # the last: a non-UTF-8 byte
        await etcd.put(key, key.encode("utf-8", "surrogateescape"))
        kv = await etcd.get(key)
        assert kv is not None and kv.key == key
    kvs, _ = await etcd.get_prefix("bad")
    assert [kv.key for kv in kvs] == ["bad\udcffutf8"]


async def test_prefix_reads_and_deletes_only_its_keys(etcd: EtcdClient) -> None:
    await etcd.put("shard/b", b"2")
    await etcd.put("shard/a", b"1")
    await etcd.put("shard0", b"outside")  # '0' is the byte after '/'
    last = await etcd.put("shard", b"outside too")
    kvs, revision = await etcd.get_prefix("shard/")
    assert [(kv.key, kv.value) for kv in kvs] == [("shard/a", b"1"), ("shard/b", b"2")]
    assert revision == last
    assert await etcd.delete_prefix("shard/") == 2
    assert (await etcd.get_prefix("shard/"))[0] == []
    kvs, _ = await etcd.get_prefix("")
    assert sorted(kv.key for kv in kvs) == ["shard", "shard0"]


async def test_refusals_are_etcd_errors(etcd: EtcdClient) -> None:
    with pytest.raises(EtcdError, match="key is not provided") as empty_key:
        await etcd.put("", b"v")
    assert empty_key.value.code == 3
    with pytest.raises(EtcdError, match="lease not found") as unknown_lease:
        await etcd.put("k", b"v", lease=12345)
    assert unknown_lease.value.code == 5
    with pytest.raises(ValueError, match="TTL"):
        await etcd.grant(0)


def test_bad_settings_are_refused_when_made() -> None:
    with pytest.raises(ValueError, match="at least one endpoint"):
        EtcdClient([])
    with pytest.raises(ValueError, match="not an http"):
        EtcdClient(["127.0.0.1:2379"])
    with pytest.raises(ValueError, match="both a user and a password"):
        EtcdClient(["http://127.0.0.1:2379"], user="root")
    with pytest.raises(ValueError, match="timeout"):
        EtcdClient(["http://127.0.0.1:2379"], timeout=0)
    with pytest.raises(ValueError, match="op must be one of"):
        Compare.version("k", "==", 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="revision 1 or later"):
        EtcdClient(["http://127.0.0.1:2379"]).watch_prefix("p", start_revision=0)


# -- txn -----------------------------------------------------------------------------------


async def test_txn_on_a_missing_key_takes_each_branch(etcd: EtcdClient) -> None:
    absent = [Compare.version("leader", "=", 0)]
    claim = [Op.put("leader", b"a")]
    look = [Op.get("leader")]
    won = await etcd.txn(absent, claim, look)
    assert won.succeeded
    assert won.responses == [won.revision]
    lost = await etcd.txn(absent, [Op.put("leader", b"b")], look)
    assert not lost.succeeded
    assert lost.revision == won.revision  # nothing was written
    holder = lost.responses[0]
    assert isinstance(holder, KeyValue) and holder.value == b"a"
    # The same with the create revision.
    assert not (await etcd.txn([Compare.create_revision("leader", "=", 0)], claim)).succeeded
    assert (await etcd.txn([Compare.create_revision("other", "=", 0)], [])).succeeded


async def test_txn_compares_values(etcd: EtcdClient) -> None:
    await etcd.put("owner", b"shard-a")
    moved = await etcd.txn([Compare.value("owner", "=", b"shard-a")],
                           [Op.put("owner", b"shard-b"), Op.get("owner")])
    assert moved.succeeded
    assert moved.responses[0] == moved.revision
    assert isinstance(moved.responses[1], KeyValue) and moved.responses[1].value == b"shard-b"
    stale = await etcd.txn([Compare.value("owner", "=", b"shard-a")],
                           [Op.delete("owner")], [Op.get("owner")])
    assert not stale.succeeded
    assert isinstance(stale.responses[0], KeyValue) and stale.responses[0].value == b"shard-b"
    assert (await etcd.txn([Compare.value("owner", "!=", b"shard-a")], [])).succeeded
    # etcd's rule: a value compare on a missing key is false whatever the operator.
    assert not (await etcd.txn([Compare.value("missing", "!=", b"x")], [])).succeeded
    assert not (await etcd.txn([Compare.value("missing", "=", b"")], [])).succeeded


async def test_txn_compares_revisions(etcd: EtcdClient) -> None:
    created = await etcd.put("epoch", b"1")
    updated = await etcd.put("epoch", b"2")
    assert not (await etcd.txn([Compare.mod_revision("epoch", "=", created)],
                               [Op.delete("epoch")])).succeeded
    assert (await etcd.txn([Compare.mod_revision("epoch", ">", created),
                            Compare.mod_revision("epoch", "<", updated + 1),
                            Compare.create_revision("epoch", "=", created),
                            Compare.version("epoch", "=", 2)], [])).succeeded
    deleted = await etcd.txn([Compare.mod_revision("epoch", "=", updated)],
                             [Op.delete("epoch"), Op.delete("epoch")])
    assert deleted.succeeded
    assert deleted.responses == [1, 0]
    assert await etcd.get("epoch") is None


# -- leases --------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_leased_key_stays_while_kept_alive_and_goes_after(etcd: EtcdClient) -> None:
    lease, ttl = await etcd.grant_with_ttl(2)
    assert ttl == 2
    await etcd.put("alive", b"1", lease=lease)
    kv = await etcd.get("alive")
    assert kv is not None and kv.lease == lease
    for _ in range(8):  # 4 s: twice the TTL
        await trio.sleep(0.5)
        assert await etcd.keepalive(lease) == 2
    assert await etcd.get("alive") is not None
    with trio.fail_after(10):  # the TTL, and etcd checks expiry every 0.5 s or so
        while await etcd.get("alive") is not None:  # noqa: ASYNC110  # polls etcd
            await trio.sleep(0.1)
    assert await etcd.keepalive(lease) == 0


async def test_etcd_raises_a_short_ttl_to_its_minimum(etcd: EtcdClient) -> None:
    lease, ttl = await etcd.grant_with_ttl(1)
    assert ttl == 2  # 1.5 x the default 1 s election timeout, rounded up
    assert await etcd.keepalive(lease) == 2


async def test_revoke_deletes_the_keys_at_once(etcd: EtcdClient) -> None:
    lease = await etcd.grant(60)
    await etcd.put("a", b"1", lease=lease)
    await etcd.put("b", b"2", lease=lease)
    await etcd.put("c", b"3")
    await etcd.revoke(lease)
    kvs, _ = await etcd.get_prefix("")
    assert [kv.key for kv in kvs] == ["c"]
    assert await etcd.keepalive(lease) == 0
    await etcd.revoke(lease)  # gone already: not an error


# -- watch ---------------------------------------------------------------------------------


def summary(events: list[WatchEvent]) -> list[tuple[str, str, bytes, int]]:
    return [(e.kind, e.kv.key, e.kv.value, e.revision) for e in events]


async def test_watch_sees_puts_and_deletes_in_order(etcd: EtcdClient) -> None:
    await etcd.put("w/before", b"0")
    _, revision = await etcd.get_prefix("w/")
    expected = []
    async with etcd.watch_prefix("w/", start_revision=revision + 1) as events:
        r1 = await etcd.put("w/a", b"1")
        await etcd.put("outside", b"x")
        r2 = await etcd.put("w/b", b"2")
        r3 = await etcd.put("w/a", b"3")
        assert await etcd.delete_prefix("w/") == 3
        _, r4 = await etcd.get_prefix("w/")
        expected = [("put", "w/a", b"1", r1), ("put", "w/b", b"2", r2),
                    ("put", "w/a", b"3", r3),
                    ("delete", "w/a", b"", r4), ("delete", "w/b", b"", r4),
                    ("delete", "w/before", b"", r4)]
        seen = []
        with trio.fail_after(10):
            async for event in events:
                seen.append(event)
                if len(seen) == len(expected):
                    break
        assert summary(seen) == expected
        assert events.next_revision == r4 + 1
        assert seen[0].kv.version == 1 and seen[2].kv.version == 2


async def test_watch_from_an_old_revision_replays_history(etcd: EtcdClient) -> None:
    first = await etcd.put("h/x", b"1")
    await etcd.put("h/x", b"2")
    async with etcd.watch_prefix("h/", start_revision=first) as events:
        with trio.fail_after(10):
            seen = [await events.__anext__(), await events.__anext__()]
    assert [e.kv.value for e in seen] == [b"1", b"2"]


async def collect(etcd: EtcdClient, prefix: str, start_revision: int,
                  into: list[WatchEvent], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    async with etcd.watch_prefix(prefix, start_revision=start_revision) as events:
        task_status.started()
        async for event in events:
            into.append(event)


async def wait_for_count(events: list[WatchEvent], count: int) -> None:
    with trio.fail_after(20):
        while len(events) < count:  # noqa: ASYNC110  # polls the watching task's progress
            await trio.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_watch_resumes_without_loss_across_an_etcd_restart(
        etcd: EtcdClient, etcd_server: EtcdServer, nursery: trio.Nursery, how: str) -> None:
    _, revision = await etcd.get_prefix("r/")
    seen: list[WatchEvent] = []
    await nursery.start(collect, etcd, "r/", revision + 1, seen)
    revisions = [await etcd.put(f"r/{n}", b"before") for n in range(3)]
    await wait_for_count(seen, 3)
    etcd_server.stop() if how == "stop" else etcd_server.kill()
    await etcd_server.start()
    # Written at once, while the watch is still dialling again.
    revisions += [await etcd.put(f"r/{n}", b"after") for n in range(3)]
    assert await etcd.delete_prefix("r/") == 3
    revisions.append((await etcd.get_prefix("r/"))[1])
    await wait_for_count(seen, 9)
    await trio.sleep(0.2)  # a repeated event would arrive now
    assert [e.revision for e in seen] == revisions[:6] + [revisions[6]] * 3
    assert [e.kind for e in seen] == ["put"] * 6 + ["delete"] * 3
    nursery.cancel_scope.cancel()


async def test_watch_raises_compacted_when_its_history_is_gone(
        etcd: EtcdClient, etcd_server: EtcdServer) -> None:
    first = await etcd.put("c/x", b"1")
    last = await etcd.put("c/x", b"2")
    await gateway_post(etcd_server, "/v3/kv/compaction", {"revision": str(last)})
    async with etcd.watch_prefix("c/", start_revision=first) as events:
        with pytest.raises(WatchCompacted) as compacted, trio.fail_after(10):
            await events.__anext__()
        assert compacted.value.revision == last
        with pytest.raises(StopAsyncIteration):
            await events.__anext__()  # finished: the caller re-lists and watches anew
    # The contract's way on: list, then watch from the listing's revision + 1.
    kvs, revision = await etcd.get_prefix("c/")
    assert [kv.value for kv in kvs] == [b"2"]
    async with etcd.watch_prefix("c/", start_revision=revision + 1) as events:
        following = await etcd.put("c/x", b"3")
        with trio.fail_after(10):
            assert (await events.__anext__()).revision == following


async def test_a_watch_redials_a_silent_stream_after_idle_timeout(
        etcd: EtcdClient, etcd_server: EtcdServer) -> None:
    _, revision = await etcd.get_prefix("i/")
    async with etcd.watch_prefix("i/", start_revision=revision + 1,
                                 idle_timeout=0.3) as events:
        async with trio.open_nursery() as nursery:
            async def write_later() -> None:
                await trio.sleep(1.0)
                await etcd.put("i/x", b"1")
            nursery.start_soon(write_later)
            with trio.fail_after(10):
                event = await events.__anext__()
        assert event.kv.key == "i/x"
        assert events.streams_opened >= 2


# -- endpoints -----------------------------------------------------------------------------


async def test_a_dead_first_endpoint_is_passed_over(etcd_server: EtcdServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with EtcdClient([dead, etcd_server.url], timeout=1.0) as etcd:
        await etcd.put("k", b"v")  # a refused connection: never sent, so safe to move on
        assert (await etcd.get("k") or pytest.fail("no key")).value == b"v"


async def test_a_stalled_endpoint_is_passed_over_for_reads_and_then_avoided(
        etcd_server: EtcdServer, nursery: trio.Nursery) -> None:
    stalled = Blackhole()
    await nursery.start(stalled.run)
    # A timeout a busy etcd meets with room to spare: a slow answer from it would send
    # the call on to the stalled endpoint.
    async with EtcdClient([stalled.url, etcd_server.url], timeout=1.0) as etcd:
        assert await etcd.get("k") is None
        assert stalled.accepted == 1
        for _ in range(5):  # the last good endpoint is tried first from now on
            await etcd.put("k", b"v")
            await etcd.get("k")
        assert stalled.accepted == 1


async def test_an_endpoint_that_is_not_etcd_is_passed_over(
        etcd_server: EtcdServer, nursery: trio.Nursery) -> None:
    wrong = NotEtcd()
    await nursery.start(wrong.run)
    async with EtcdClient([wrong.url, etcd_server.url]) as etcd:
        assert await etcd.get("k") is None
    async with EtcdClient([wrong.url]) as etcd:
        with pytest.raises(EtcdUnavailable, match="HTTP 502, not an etcd answer"):
            await etcd.get("k")
        with pytest.raises(EtcdUnavailable, match="may or may not have been applied"):
            await etcd.put("k", b"v")


async def test_a_write_sent_to_a_stalled_endpoint_is_not_sent_again(
        etcd_server: EtcdServer, nursery: trio.Nursery) -> None:
    stalled = Blackhole()
    await nursery.start(stalled.run)
    async with EtcdClient([stalled.url, etcd_server.url], timeout=0.3) as etcd:
        with pytest.raises(EtcdUnavailable, match="may or may not have been applied"):
            await etcd.put("k", b"v")
    async with EtcdClient([etcd_server.url]) as direct:
        assert await direct.get("k") is None  # not applied twice, nor at all here


async def test_nothing_answering_is_unavailable_within_the_bound(nursery: trio.Nursery,
                                                                 ) -> None:
    stalled = Blackhole()
    await nursery.start(stalled.run)
    dead = f"http://127.0.0.1:{free_port()}"
    async with EtcdClient([dead, stalled.url], timeout=0.5) as etcd:
        with trio.fail_after(5):  # at most 2 x 0.5 s; the bound is generous for a busy box
            with pytest.raises(EtcdUnavailable) as refused:
                await etcd.get("k")
            message = str(refused.value)
            assert dead in message and stalled.url in message
            assert "ConnectError" in message and "no answer within 0.5 s" in message
            with pytest.raises(EtcdUnavailable):
                await etcd.keepalive(1)
            with pytest.raises(EtcdUnavailable):
                await etcd.put("k", b"v")


async def test_a_paused_etcd_is_unavailable_and_answers_again_on_resume(
        etcd_server: EtcdServer) -> None:
    async with EtcdClient([etcd_server.url], timeout=0.5) as etcd:
        await etcd.put("k", b"v")
        etcd_server.pause()
        try:
            with trio.fail_after(5), pytest.raises(EtcdUnavailable):
                await etcd.get("k")
        finally:
            etcd_server.resume()
        with trio.fail_after(10):
            while True:
                try:
                    kv = await etcd.get("k")
                    break
                except EtcdUnavailable:
                    await trio.sleep(0.1)
        assert kv is not None and kv.value == b"v"


async def test_tls_with_client_certificates(etcd_binary: str, tmp_path: Path) -> None:
    tls = EtcdTls.make(tmp_path / "tls")
    server = EtcdServer(tmp_path / "etcd", etcd_binary, tls=tls)
    try:
        await server.start()
        assert server.url.startswith("https://")
        async with EtcdClient([server.url], ca=tls.ca, cert=tls.client_cert,
                              key=tls.client_key) as etcd:
            await etcd.put("k", b"over tls")
            assert (await etcd.get("k") or pytest.fail("no key")).value == b"over tls"
        # etcd asks for a client certificate: without one the handshake fails.
        async with EtcdClient([server.url], ca=tls.ca, timeout=1.0) as anonymous:
            with pytest.raises(EtcdUnavailable):
                await anonymous.get("k")
        # A client that does not trust etcd's CA refuses to talk to it.
        async with EtcdClient([server.url], timeout=1.0) as untrusting:
            with pytest.raises(EtcdUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusting.get("k")
    finally:
        server.close()


# -- auth ----------------------------------------------------------------------------------


async def enable_auth(server: EtcdServer, password: str) -> None:
    await gateway_post(server, "/v3/auth/user/add", {"name": "root", "password": password})
    await gateway_post(server, "/v3/auth/role/add", {"name": "root"})
    await gateway_post(server, "/v3/auth/user/grant", {"user": "root", "role": "root"})
    await gateway_post(server, "/v3/auth/enable", {})


@pytest.mark.slow
async def test_auth_token_is_sent_and_renewed_after_etcd_forgets_it(
        etcd_server: EtcdServer, nursery: trio.Nursery) -> None:
    password = "s3cret-pa55"
    await enable_auth(etcd_server, password)
    async with EtcdClient([etcd_server.url]) as anonymous:
        with pytest.raises(EtcdError, match="user name is empty"):
            await anonymous.get("k")
    async with EtcdClient([etcd_server.url], user="root", password=password) as etcd:
        first = await etcd.put("a/k", b"1")
        seen: list[WatchEvent] = []
        await nursery.start(collect, etcd, "a/", first, seen)
        await wait_for_count(seen, 1)
        token = await etcd.gateway.token()
        # etcd's default "simple" tokens live in memory: a restart forgets them.
        etcd_server.stop()
        await etcd_server.start()
        assert await etcd.put("a/k", b"2") > first  # refused, renewed, repeated
        assert await etcd.gateway.token() != token
        await wait_for_count(seen, 2)  # the watch came back too
        assert [e.kv.value for e in seen] == [b"1", b"2"]
        nursery.cancel_scope.cancel()


async def test_bad_credentials_are_refused_without_showing_the_password(
        etcd_server: EtcdServer) -> None:
    await enable_auth(etcd_server, "the-right-one")
    async with EtcdClient([etcd_server.url], user="root", password="hunter2-wrong") as etcd:
        with pytest.raises(EtcdError) as refused:
            await etcd.get("k")
    assert "authenticate user 'root'" in str(refused.value)
    assert "hunter2" not in str(refused.value) and "hunter2" not in repr(etcd.gateway)
