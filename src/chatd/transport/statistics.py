"""Per-peer counters of the mesh, as `Mesh.statistics()` returns them (for /metrics)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

#: Upper bounds (seconds) of the request latency histogram's buckets; one more bucket
#: counts everything slower than the last bound.
LATENCY_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(slots=True)
class PeerStatistics:
    #: "up" (a link is open), "connecting" (we dial it and have no link yet), "down"
    #: (it dials us and has not, or its link dropped).
    state: str = "down"
    #: The boot id the peer gave at its latest handshake (None before the first).
    boot_id: str | None = None
    #: Frames and bytes waiting for the writer on the current link.
    queue_frames: int = 0
    queue_bytes: int = 0
    requests_sent: int = 0
    #: Requests that got no answer: refused at once (down, queue full), dropped with their
    #: link, or timed out (these are also in `requests_timed_out`).
    requests_failed: int = 0
    requests_timed_out: int = 0
    #: Answers that were the peer's error (`ok: false`); they count as answered.
    remote_errors: int = 0
    #: Answers that came after their request timed out or was abandoned.
    late_responses: int = 0
    requests_received: int = 0
    posts_sent: int = 0
    posts_dropped: int = 0
    posts_received: int = 0
    #: Time from sending a request to its answer, for answered requests.
    latency_count: int = 0
    latency_sum: float = 0.0
    latency_max: float = 0.0
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))
    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    #: Handshakes completed; `reconnects` is that minus the first.
    links: int = 0
    reconnects: int = 0
    #: Dial attempts and handshakes with this peer that did not give a link.
    connect_failures: int = 0
    #: Links closed because the peer broke the protocol or went silent.
    link_failures: int = 0

    def observe_latency(self, seconds: float) -> None:
        self.latency_count += 1
        self.latency_sum += seconds
        if seconds > self.latency_max:
            self.latency_max = seconds
        index = 0
        for bound in LATENCY_BOUNDS:
            if seconds <= bound:
                break
            index += 1
        self.latency_buckets[index] += 1

    def snapshot(self) -> PeerStatistics:
        return dataclasses.replace(self, latency_buckets=list(self.latency_buckets))


#: Counters exported to Prometheus, by field (each becomes chatd_mesh_<field>_total).
_COUNTERS = ("requests_sent", "requests_failed", "requests_timed_out", "remote_errors",
             "late_responses", "requests_received", "posts_sent", "posts_dropped",
             "posts_received", "frames_in", "frames_out", "bytes_in", "bytes_out", "links",
             "reconnects", "connect_failures", "link_failures")


def prometheus_lines(statistics: dict[str, PeerStatistics]) -> list[str]:
    """The mesh's per-peer state, queues, request latency and failures, in Prometheus'
    text format (one series per peer, labelled `peer`)."""
    lines = ["# TYPE chatd_mesh_peer_up gauge"]
    lines += [f'chatd_mesh_peer_up{{peer="{peer}"}} {int(stats.state == "up")}'
              for peer, stats in statistics.items()]
    lines.append("# TYPE chatd_mesh_queue_frames gauge")
    lines += [f'chatd_mesh_queue_frames{{peer="{peer}"}} {stats.queue_frames}'
              for peer, stats in statistics.items()]
    for name in _COUNTERS:
        lines.append(f"# TYPE chatd_mesh_{name}_total counter")
        lines += [f'chatd_mesh_{name}_total{{peer="{peer}"}} {getattr(stats, name)}'
                  for peer, stats in statistics.items()]
    lines.append("# TYPE chatd_mesh_request_seconds histogram")
    for peer, stats in statistics.items():
        cumulative = 0
        for bound, count in zip((*LATENCY_BOUNDS, "+Inf"), stats.latency_buckets, strict=True):
            cumulative += count
            lines.append(f'chatd_mesh_request_seconds_bucket{{peer="{peer}",le="{bound}"}} '
                         f"{cumulative}")
        lines.append(f'chatd_mesh_request_seconds_sum{{peer="{peer}"}} {stats.latency_sum:.6f}')
        lines.append(f'chatd_mesh_request_seconds_count{{peer="{peer}"}} {stats.latency_count}')
    return lines
