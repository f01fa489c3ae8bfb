"""The etcd v3 client chatd's coordination uses: keys, txns, leases and watches.

`async with EtcdClient(["http://127.0.0.1:2379"]) as etcd: await etcd.put("k", b"v")`.

The operations are typed and small; the JSON forms are in `wire.py`, the transport
(endpoint failover, timeouts, TLS, auth) in `gateway.py`, whose rules apply to every
call here: an unreachable cluster is `EtcdUnavailable` (from a write: outcome unknown),
a refusal is `EtcdError`. Both derive from `CoordinationError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

from chatd.coordination import wire
from chatd.coordination.errors import EtcdError
from chatd.coordination.gateway import Gateway, TlsFiles
from chatd.coordination.watch import Watch
from chatd.coordination.wire import Compare, KeyValue, Op, TxnResult

#: etcd's gRPC code for "not found" (an unknown lease).
_NOT_FOUND = 5


class EtcdClient:
    """A client of one etcd cluster, through any of its `endpoints` (http:// or https://
    URLs of the members' client ports).

    `timeout` bounds each endpoint's attempt at a call. `ca` is the CA file that signed
    etcd's certificate; `cert`/`key` a client certificate for `--client-cert-auth`.
    With `user`/`password` it authenticates, and again when etcd forgets the token.
    """

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 2.0,
                 ca: str | None = None, cert: str | None = None, key: str | None = None,
                 user: str | None = None, password: str | None = None) -> None:
        self.gateway = Gateway(list(endpoints), timeout, TlsFiles(ca, cert, key), user,
                               password)

    async def __aenter__(self) -> EtcdClient:
        await self.gateway.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.gateway.aclose()

    # -- keys ------------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        body = await self.gateway.call("/v3/kv/range", {"key": wire.encode_key(key)})
        kvs = wire.parse_range(body).kvs
        return kvs[0] if kvs else None

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under `prefix` in key order, and the revision they were read at:
        a watch from that revision + 1 then misses nothing and repeats nothing."""
        body = await self.gateway.call("/v3/kv/range", wire.prefix_range(prefix))
        result = wire.parse_range(body)
        return result.kvs, result.revision

    async def put(self, key: str, value: bytes, *, lease: int | None = None) -> int:
        """Write `key`; the revision of the write. With `lease`, the key goes when the
        lease ends (an unknown lease is refused: `EtcdError`, code 5)."""
        body = await self.gateway.call("/v3/kv/put", wire.put_body(key, value, lease),
                                       write=True)
        return wire.header_revision(body)

    async def delete(self, key: str) -> int:
        """Delete `key`; how many keys went (0 or 1)."""
        body = await self.gateway.call("/v3/kv/deleterange", {"key": wire.encode_key(key)},
                                       write=True)
        return wire.integer(body.get("deleted"), "deleted")

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key under `prefix`; how many went."""
        body = await self.gateway.call("/v3/kv/deleterange", wire.prefix_range(prefix),
                                       write=True)
        return wire.integer(body.get("deleted"), "deleted")

    async def txn(self, compare: Sequence[Compare], success: Sequence[Op],
                  failure: Sequence[Op] = ()) -> TxnResult:
        """If every compare holds, run `success`, else `failure`, atomically.

        To test that a key is absent compare its version with 0: a value compare on a
        missing key is false whatever the operator (etcd's rule, see `wire.py`)."""
        body = await self.gateway.call(
            "/v3/kv/txn", wire.txn_body(compare, success, failure), write=True)
        return wire.parse_txn(body, success, failure)

    # -- leases ----------------------------------------------------------------------------

    async def grant(self, ttl_seconds: int) -> int:
        """A new lease of `ttl_seconds`; its id. etcd raises a TTL below its minimum
        (1.5 times its election timeout: 2 s with the default 1 s) to that minimum."""
        lease, _ = await self.grant_with_ttl(ttl_seconds)
        return lease

    async def grant_with_ttl(self, ttl_seconds: int) -> tuple[int, int]:
        """Like `grant`; also the TTL etcd gave, which may exceed the one asked for.
        (Repeated on another endpoint after a lost answer, a grant leaves an unused lease
        behind, which expires by itself: so it is not treated as a write.)"""
        if ttl_seconds < 1:
            raise ValueError(f"a lease needs a TTL of at least 1 second, not {ttl_seconds}")
        body = await self.gateway.call("/v3/lease/grant", {"TTL": str(ttl_seconds)})
        return (wire.integer(body.get("ID"), "lease ID"),
                wire.integer(body.get("TTL"), "TTL"))

    async def keepalive(self, lease: int) -> int:
        """Renew `lease` to its full TTL; that TTL, or 0 when the lease is gone."""
        objects = await self.gateway.call_stream("/v3/lease/keepalive", {"ID": str(lease)})
        result = wire.mapping(objects[0].get("result", {}), "a keepalive answer")
        return wire.integer(result.get("TTL"), "TTL")

    async def revoke(self, lease: int) -> None:
        """End `lease` now, deleting its keys. A lease that is gone already is no error:
        either way it is gone."""
        try:
            await self.gateway.call("/v3/lease/revoke", {"ID": str(lease)})
        except EtcdError as error:
            if error.code != _NOT_FOUND:
                raise

    # -- watch -----------------------------------------------------------------------------

    def watch_prefix(self, prefix: str, *, start_revision: int,
                     idle_timeout: float | None = None) -> Watch:
        """Every change under `prefix` from `start_revision` on, in revision order:
        `async with etcd.watch_prefix(p, start_revision=r) as events: async for e in
        events: ...`. `watch.py` states the resume and compaction contract."""
        return Watch(self.gateway, prefix, start_revision=start_revision,
                     idle_timeout=idle_timeout)
