"""Showing results: a readable table per result, and the sweep's plot."""

from __future__ import annotations

from collections.abc import Sequence

from bench.harness import Result

#: Figures in the order and with the labels the table shows them.
_LABELS = {
    "sent": "sends acknowledged",
    "send_errors": "sends refused",
    "deliveries": "messages delivered",
    "delivered": "messages delivered",
    "connected": "connections held",
    "lost": "lost",
    "duplicated": "duplicated",
    "closed_by_server": "sockets closed by the server",
    "in_order": "in seq order",
    "deliveries_per_s": "deliveries/s",
    "durable_sends_per_s": "durable sends/s",
    "messages_per_s": "messages/s",
    "appends_per_s": "durable appends/s",
    "connections_per_s": "connections/s",
    "p50_ms": "latency p50 (ms)",
    "p95_ms": "latency p95 (ms)",
    "p99_ms": "latency p99 (ms)",
    "max_ms": "latency max (ms)",
    "server_cpu_us_per_delivery": "server CPU per delivery (µs)",
    "server_cpu_us_per_message": "server CPU per message sent (µs)",
    "loop_switches_per_message": "event-loop context switches per message",
    "syscalls_per_message": "system calls per message (strace)",
    "syscalls_top": "  of which, per message",
    "acks": "acks sent by clients",
    "receipts_per_message": "receipts per message",
    "server_cpu_s": "server CPU (s)",
    "server_cpu_us_per_connect": "server CPU per connect (µs)",
    "cpu_us_per_append": "CPU per append (µs)",
    "rss_per_connection_kb": "server RSS per connection (KB)",
    "server_rss_mb": "server RSS (MB)",
    "mean_batch": "appends per synced batch",
    "sends": "sends acknowledged",
    "server_cpu_us_per_send": "server CPU per send (µs)",
    "appends_per_batch": "appends per synced batch",
    "floor_cpu_us_per_request": "server CPU of GET /healthz (µs)",
    "seconds": "seconds",
    "client_cpu_s": "client CPU (s)",
    "upload_mb_s": "upload (MB/s)",
    "download_mb_s": "download (MB/s)",
    "upload_server_cpu_ms_per_mb": "server CPU per MB uploaded (ms)",
    "download_server_cpu_ms_per_mb": "server CPU per MB downloaded (ms)",
    "rss_before_mb": "server RSS before (MB)",
    "rss_peak_upload_mb": "server RSS peak, upload (MB)",
    "rss_peak_download_mb": "server RSS peak, download (MB)",
    "rss_growth_upload_mb": "server RSS growth, upload (MB)",
    "ranged_64k_reads_per_s": "ranged 64 KiB reads/s",
    "ranged_server_cpu_us_per_read": "server CPU per ranged read (µs)",
    "sha256_matches": "sha256 matches",
    "client_encrypt_us_per_message": "client CPU per encryption (µs)",
    "client_decrypt_us_per_message": "client CPU per decryption (µs)",
    "decrypt_errors": "bodies that did not decrypt",
    "body_bytes": "body bytes (base64, as relayed)",
    "hot_olm_encrypt_us": "Olm encryption, back to back (µs)",
    "hot_olm_decrypt_us": "Olm decryption, back to back (µs)",
    "hot_megolm_encrypt_us": "Megolm encryption, back to back (µs)",
    "hot_megolm_decrypt_us": "Megolm decryption, back to back (µs)",
}


def _format(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _label(key: str) -> str:
    if key.startswith(("chatd_ping_us_gap_", "bare_echo_us_gap_")):
        who, gap = key.split("_us_gap_")
        name = "chatd ping" if who == "chatd_ping" else "bare echo"
        return f"{name}, {gap} idle (µs CPU)"
    if key == "reaction_to_message_cpu":
        return "CPU, reaction / message"
    if key == "e2e_to_plain_server_cpu":
        return "server CPU per message, e2e / plain"
    if key == "e2e_to_plain_server_cpu_rounds":
        return "  each round's ratio"
    for phase in ("message", "reaction"):
        if key.startswith(f"{phase}_"):
            return f"{phase}s: {_LABELS[key.removeprefix(phase + '_')]}"
    for variant in ("plain", "e2e"):
        if key.startswith(f"{variant}_"):
            return f"{variant}: {_LABELS[key.removeprefix(variant + '_')]}"
    return _LABELS[key]


#: The reactions scenario's figures (its two phases, and their ratio).
_PHASED = [f"{phase}_{name}" for phase in ("message", "reaction") for name in (
    "sent", "deliveries", "server_cpu_us_per_message", "server_cpu_us_per_delivery")] + [
    "reaction_to_message_cpu"] + [
    f"{variant}_{name}" for variant in ("plain", "e2e") for name in (
        "sent", "deliveries", "lost", "body_bytes", "server_cpu_us_per_message",
        "server_cpu_us_per_delivery", "p50_ms", "p99_ms")] + [
    "e2e_to_plain_server_cpu", "e2e_to_plain_server_cpu_rounds"]


def print_result(result: Result) -> None:
    params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in result.params.items())
    print(f"\n{result.scenario} ({params})")
    shown = [key for key in _LABELS if key in result.figures] + [
        key for key in result.figures if "_us_gap_" in key] + [
        key for key in _PHASED if key in result.figures]
    for key in shown:
        print(f"  {_label(key):<32} {_format(result.figures[key])}")
    for warning in result.warnings:
        print(f"  ! {warning}")


def plot_sweep(results: Sequence[Result], path: str) -> None:
    """Latency percentiles against offered rate, one line per percentile."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    rates = [r.params["rate"] for r in results]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for key, label in (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99"),
                       ("max_ms", "max")):
        axes.plot(rates, [r.figures.get(key, float("nan")) for r in results], marker="o",
                  label=label)
    axes.set_xlabel("offered rate (messages/s)")
    axes.set_ylabel("end-to-end latency (ms)")
    axes.set_yscale("log")
    shape = results[0].scenario.split(":")[-1] if results else ""
    axes.set_title(f"chatd {shape}: latency against offered rate (one shard)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    print(f"\nplot: {path}")
