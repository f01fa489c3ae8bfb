"""The benchmark harness runs every scenario, small, so it never rots.

Correctness only: every message acknowledged is delivered once, in every scenario. No
speed is asserted (this machine is shared and noisy); the figures live in
docs/benchmarks.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCENARIOS = {"direct", "group", "idle", "catchup", "burst", "sweep:direct", "appends",
             "wakeup", "reactions"}


def test_quick_run_of_every_scenario_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    plot = tmp_path / "sweep.png"
    finished = subprocess.run(
        [sys.executable, "-m", "chatd", "bench", "--quick", "--json", "-", "--plot", str(plot)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr[-3000:]
    lines = [json.loads(line) for line in finished.stdout.splitlines()
             if line.startswith("{")]
    results = [line for line in lines if line["scenario"] != "environment"]
    assert {r["scenario"] for r in results} == SCENARIOS
    [wakeup] = [r for r in results if r["scenario"] == "wakeup"]
    results.remove(wakeup)  # round trips on one socket: nothing to lose
    assert {key.split("_gap_")[1] for key in wakeup if "_gap_" in key} == {"0ms", "2ms", "10ms"}
    assert wakeup["chatd_ping_us_gap_2ms"] > 0
    for result in results:
        assert result["lost"] == 0 and result.get("duplicated", 0) == 0, result
    for result in results:
        if result["scenario"] in ("direct", "group", "burst", "sweep:direct"):
            assert result["deliveries"] > 0 and result["p99_ms"] > 0, result
            assert result["server_cpu_us_per_delivery"] > 0, result
    [reactions] = [r for r in results if r["scenario"] == "reactions"]
    assert reactions["reaction_sent"] > 0 and reactions["reaction_to_message_cpu"] > 0
    [idle] = [r for r in results if r["scenario"] == "idle"]
    assert idle["connected"] == idle["connections"] and idle["rss_per_connection_kb"] > 0
    [catchup] = [r for r in results if r["scenario"] == "catchup"]
    assert catchup["in_order"] and catchup["delivered"] == catchup["messages"]
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_quick_media_run_round_trips_and_reports_every_figure(tmp_path: Path) -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "chatd", "bench", "media", "--quick", "--json", "-"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr[-3000:]
    [media] = [json.loads(line) for line in finished.stdout.splitlines()
               if line.startswith("{") and '"scenario": "media"' in line]
    assert media["lost"] == 0 and media["sha256_matches"] is True
    for figure in ("upload_mb_s", "download_mb_s", "upload_server_cpu_ms_per_mb",
                   "ranged_64k_reads_per_s", "ranged_server_cpu_us_per_read",
                   "rss_peak_upload_mb"):
        assert media[figure] > 0, (figure, media)


def test_quick_e2e_run_decrypts_every_body_and_compares_with_plain(tmp_path: Path) -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "chatd", "bench", "e2e", "--quick", "--json", "-"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr[-3000:]
    results = {line["scenario"]: line for line in map(json.loads, (
        text for text in finished.stdout.splitlines() if text.startswith("{")))}
    for shape in ("direct", "group"):
        result = results[f"e2e:{shape}"]
        assert result["lost"] == 0 and result["duplicated"] == 0, result
        assert result["decrypt_errors"] == 0, result
        # Every delivered body was decrypted: the latency stamp is inside the ciphertext.
        assert result["e2e_deliveries"] == result["plain_deliveries"] > 0, result
        assert result["e2e_p99_ms"] > 0, result
        for figure in ("client_encrypt_us_per_message", "client_decrypt_us_per_message",
                       "e2e_to_plain_server_cpu"):
            assert result[figure] > 0, (figure, result)
