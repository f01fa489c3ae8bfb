"""Benchmarks against a cluster: start every shard of a config, place users and
conversations on chosen shards.

`chatd bench --cluster conf/cluster-3.toml` starts one `chatd serve --config FILE
--shard NAME` per shard (each with its own data directory, all on this machine) and
sums every shard's CPU. Where things live is chosen, not left to chance:

- a user's home is the shard their handle hashes to, so handles are drawn until one
  lands on the wanted shard;
- a direct conversation's owner is fixed by the pair, so pairs are matched until the
  owner is the wanted shard;
- each client connects to the shard the scenario names for it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import httpx

from bench.serverproc import BenchServer
from chatd.config import load
from chatd.domain.ids import direct_conversation_id
from chatd.domain.ring import HashRing
from chatd.domain.rules import normalize_handle


class BenchCluster:
    def __init__(self, config_path: str, *, sync: bool, env: dict[str, str]) -> None:
        cluster = load(config_path, environ={}).cluster
        self.ring = HashRing(cluster.names, cluster.vnodes)
        self.servers: dict[str, BenchServer] = {}
        mesh_ports = frozenset(spec.mesh.port for spec in cluster.shards if spec.mesh)
        try:
            for name in cluster.names:
                self.servers[name] = BenchServer(
                    sync=sync, env=env, args=("--config", config_path, "--shard", name),
                    other_ports=mesh_ports)
            self._wait_linked()
        except BaseException:
            self.stop()
            raise

    def _wait_linked(self, timeout: float = 30.0) -> None:
        """Every shard's /healthz shows every peer up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(all(peer["up"] for peer in httpx.get(f"{server.url}/healthz").json()["peers"])
                   for server in self.servers.values()):
                return
            time.sleep(0.1)
        raise TimeoutError("the shards' mesh links did not all come up")

    @property
    def shards(self) -> dict[str, tuple[str, int]]:
        return {name: (server.url, server.process.pid) for name, server in self.servers.items()}

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()


def handles_homed_on(ring: HashRing, shard: str, stamp: str) -> Iterator[str]:
    """Fresh handles whose home is `shard`."""
    for n in itertools.count():
        handle = f"b{stamp}_{n}"
        if ring.shard_for_text(normalize_handle(handle)) == shard:
            yield handle


def owner_of_pair(ring: HashRing, user_a: str, user_b: str) -> str:
    return ring.shard_for(direct_conversation_id(int(user_a), int(user_b)))
