"""The shard mesh over TCP (optionally TLS): Trio I/O around `chatd.protocol.mesh`.

Imports flow down only: transport/ may use protocol/, domain/ and errors.py, never the
services, storage or web layers; the services reach it through the `MeshHandler` they
implement and the `Mesh` they are given.
"""

from chatd.transport.errors import PeerTimeout, PeerUnavailable, RemoteError, remote_error
from chatd.transport.link import Completion, MeshHandler
from chatd.transport.mesh import Mesh
from chatd.transport.options import MeshOptions, PeerAddress
from chatd.transport.statistics import LATENCY_BOUNDS, PeerStatistics

__all__ = [
    "LATENCY_BOUNDS",
    "Completion",
    "Mesh",
    "MeshHandler",
    "MeshOptions",
    "PeerAddress",
    "PeerStatistics",
    "PeerTimeout",
    "PeerUnavailable",
    "RemoteError",
    "remote_error",
]
