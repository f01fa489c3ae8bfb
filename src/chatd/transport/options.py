"""The mesh's settings: where a peer is, and the limits and timings of every link."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PeerAddress:
    """A peer shard: its name (as in the ring) and where its mesh listener is."""

    name: str
    host: str
    port: int


@dataclass(frozen=True)
class MeshOptions:
    #: The longest frame read or written after the handshake; both sides must agree.
    max_frame_bytes: int = 1 << 20
    #: Seconds a request waits for its answer unless it says otherwise.
    request_timeout: float = 2.0
    #: Seconds between PINGs on an open link.
    heartbeat_interval: float = 0.5
    #: A peer from which nothing came for this many intervals is down.
    missed_heartbeats: int = 4
    #: Frames (and bytes) a link holds for its writer; past either, a request fails at
    #: once and a post is dropped. Answers to the peer's requests are never dropped: they
    #: are bounded by `max_inbound_requests`.
    queue_frames: int = 10_000
    queue_bytes: int = 64 << 20
    #: Seconds between dial attempts: doubling from min to max, each drawn at random from
    #: the upper half of the current step so restarted shards do not redial in lockstep.
    reconnect_min: float = 0.05
    reconnect_max: float = 2.0
    #: Seconds a connection gets to connect (dialing), finish TLS and prove itself.
    handshake_timeout: float = 2.0
    #: Connections in their handshake at once on the listener; more are closed at once
    #: (only peers that have proved themselves cost more than a few bytes each).
    max_handshakes: int = 64
    #: A peer's requests being answered (awaitables and callbacks) at once on one link;
    #: more are answered at once with a 503 `peer_busy`.
    max_inbound_requests: int = 10_000

    def __post_init__(self) -> None:
        for name in ("max_frame_bytes", "missed_heartbeats", "queue_frames", "queue_bytes",
                     "max_handshakes", "max_inbound_requests"):
            if getattr(self, name) < 1:
                raise ValueError(f"MeshOptions.{name} must be at least 1, "
                                 f"got {getattr(self, name)}")
        for name in ("request_timeout", "heartbeat_interval", "reconnect_min",
                     "handshake_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"MeshOptions.{name} must be positive, "
                                 f"got {getattr(self, name)}")
        if self.reconnect_max < self.reconnect_min:
            raise ValueError(f"MeshOptions.reconnect_max ({self.reconnect_max}) is below "
                             f"reconnect_min ({self.reconnect_min})")
        if self.max_frame_bytes >= 1 << 32:
            raise ValueError("MeshOptions.max_frame_bytes must fit the 4-byte length prefix")
