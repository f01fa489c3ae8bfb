"""The cluster fixture: three real shards (and the proxy before c) for each test.

A cluster starts in about a second, so each test gets its own: tests that kill, restart
or partition shards cannot leave a broken cluster to the next one. When the test ends
the shards are stopped with SIGTERM; each must exit 0, and their logs must hold no
traceback (whatever logged one has a bug), except:

- in a test marked xfail: it is there for a known bug, which may well log one;
- tracebacks of a known bug that can show up in any test, listed in `KNOWN_TRACEBACKS`
  with the test that holds it to account (remove the entry once it is fixed).

`proxied_cluster` is the same with a proxy on every link (tests/cluster/proxied.py), for
the fault-injection checker (tests/cluster/test_checker.py), whose run is chosen by
`--checker-seed` / CHATD_CHECKER_SEED (default: a random seed, printed) and
CHATD_CHECKER_SECONDS (how long faults are injected).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.cluster.harness import Cluster, Shard, open_cluster, tracebacks
from tests.cluster.proxied import EtcdControl, ProxiedCluster, open_proxied_cluster
from tests.etcd import EtcdServer

KNOWN_TRACEBACKS: set[str] = set()


@pytest.fixture
async def cluster(nursery: trio.Nursery, tmp_path: Path,
                  request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    async with open_cluster(tmp_path, nursery) as running:
        yield running
    if request.node.get_closest_marker("xfail") is not None:
        return
    assert running.exit_statuses and all(
        status == 0 for status in running.exit_statuses.values()), running.exit_statuses
    found = {name: [trace for trace in tracebacks(shard.log())
                    if not any(known in trace for known in KNOWN_TRACEBACKS)]
             for name, shard in running.shards.items()}
    assert not any(found.values()), "shards logged tracebacks: " + "; ".join(
        f"{name}: {len(traces)}, the first:\n{traces[0]}"
        for name, traces in found.items() if traces)


def assert_clean_exit(exit_statuses: Mapping[str, int], shards: Mapping[str, Shard]) -> None:
    """Every shard exited 0 on SIGTERM, and no run of any logged a traceback."""
    assert exit_statuses and all(
        status == 0 for status in exit_statuses.values()), exit_statuses
    found = {name: [trace for trace in tracebacks(shard.log())
                    if not any(known in trace for known in KNOWN_TRACEBACKS)]
             for name, shard in shards.items()}
    assert not any(found.values()), "shards logged tracebacks: " + "; ".join(
        f"{name}: {len(traces)}, the first:\n{traces[0]}"
        for name, traces in found.items() if traces)


@pytest.fixture
def checker_seed(request: pytest.FixtureRequest) -> int:
    """The checker run's seed: --checker-seed, CHATD_CHECKER_SEED, or a random one."""
    seed = request.config.getoption("--checker-seed", default=None)
    if seed is None and os.environ.get("CHATD_CHECKER_SEED"):
        seed = int(os.environ["CHATD_CHECKER_SEED"])
    return int(seed) if seed is not None else secrets.randbelow(1 << 32)


@pytest.fixture
def checker_seconds() -> float:
    """How long the checker injects faults: CHATD_CHECKER_SECONDS; short for CI."""
    return float(os.environ.get("CHATD_CHECKER_SECONDS", "25"))


@pytest.fixture
def checker_replication() -> dict[str, Any] | None:
    """The `[replication]` section of the checker's shards: CHATD_CHECKER_FACTOR
    (default 2; 1 runs the mesh alone) and CHATD_CHECKER_FAILOVER_AFTER (seconds,
    default 2: short, so that a CI run sees failovers)."""
    factor = int(os.environ.get("CHATD_CHECKER_FACTOR", "2"))
    if factor <= 1:
        return {"factor": 1}
    return {"factor": factor,
            "failover_after": float(os.environ.get("CHATD_CHECKER_FAILOVER_AFTER", "2.0")),
            "auto_failover": True}


@pytest.fixture
async def checker_etcd(checker_replication: dict[str, Any] | None, tmp_path: Path,
                       etcd_binary: str) -> AsyncIterator[EtcdControl | None]:
    """The checker's etcd (a real one, tests/etcd.py), with replication on; none with
    CHATD_CHECKER_ETCD=0 (failover by hand only) or factor 1."""
    if checker_replication is None or checker_replication.get("factor") == 1 \
            or os.environ.get("CHATD_CHECKER_ETCD", "1") == "0":
        yield None
        return
    server = EtcdServer(tmp_path / "etcd", etcd_binary)
    try:
        await server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
async def proxied_cluster(nursery: trio.Nursery, tmp_path: Path,
                          request: pytest.FixtureRequest,
                          checker_replication: dict[str, Any] | None,
                          checker_etcd: EtcdControl | None) -> AsyncIterator[ProxiedCluster]:
    """Three shards with a proxy on every link (and before etcd, if any), with the
    `checker_replication` settings; checked at the end like `cluster`."""
    async with open_proxied_cluster(tmp_path, nursery, replication=checker_replication,
                                    etcd=checker_etcd) as running:
        yield running
    if request.node.get_closest_marker("xfail") is not None:
        return
    assert_clean_exit(running.exit_statuses, running.shards)
