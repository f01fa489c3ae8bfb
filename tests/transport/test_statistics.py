"""The mesh's counters as /metrics shows them."""

from __future__ import annotations

from chatd.transport.statistics import PeerStatistics, prometheus_lines


def test_prometheus_lines_show_state_counters_and_a_cumulative_histogram() -> None:
    up = PeerStatistics(state="up", requests_sent=3, requests_failed=1, queue_frames=2)
    up.observe_latency(0.0005)
    up.observe_latency(0.2)
    up.observe_latency(9.0)
    lines = prometheus_lines({"b": up, "c": PeerStatistics(state="connecting")})
    assert 'chatd_mesh_peer_up{peer="b"} 1' in lines
    assert 'chatd_mesh_peer_up{peer="c"} 0' in lines
    assert 'chatd_mesh_queue_frames{peer="b"} 2' in lines
    assert 'chatd_mesh_requests_failed_total{peer="b"} 1' in lines
    assert 'chatd_mesh_request_seconds_bucket{peer="b",le="0.001"} 1' in lines
    assert 'chatd_mesh_request_seconds_bucket{peer="b",le="0.25"} 2' in lines
    assert 'chatd_mesh_request_seconds_bucket{peer="b",le="+Inf"} 3' in lines
    assert 'chatd_mesh_request_seconds_count{peer="b"} 3' in lines
    # Every series is declared once, before its samples.
    types = [line for line in lines if line.startswith("# TYPE")]
    assert len(types) == len(set(types))
