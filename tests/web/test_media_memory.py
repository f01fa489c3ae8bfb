"""A 1 GiB upload through a real server process does not grow its RSS by more than
64 MB: the body is streamed to disk with back-pressure, never held (web/streamed_body.py).
The peak is the kernel's own (VmHWM, reset just before the upload), not a sampling."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import trio

from tests.helpers import ServerProcess, new_account
from tests.media_files import file_chunks, sha256_of_file, sparse_file

GIB = 1024 * 1024 * 1024
MB = 1_000_000


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def _reset_peak(pid: int) -> None:
    # "5" resets VmHWM (the peak resident set) to the current RSS (proc(5)).
    Path(f"/proc/{pid}/clear_refs").write_text("5")


async def test_a_1_gib_upload_grows_rss_by_less_than_64_mb(tmp_path: Path) -> None:
    source = sparse_file(tmp_path / "one-gib.bin", GIB)
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log", {
        "CHATD_MEDIA_MAX_UPLOAD_BYTES": str(2 * GIB),
        "CHATD_MEDIA_QUOTA_BYTES": str(4 * GIB)})
    try:
        url = await server.ready()
        pid = server.process.pid
        async with httpx.AsyncClient(base_url=url, timeout=300) as http:
            alice = await new_account(http)
            # Warm up the upload path (imports, first allocations) before measuring.
            warm = await http.post("/media/upload", content=b"x" * 100_000, headers={
                **alice.headers, "Content-Type": "application/octet-stream"})
            assert warm.status_code == 201
            baseline_kb = _status_kb(pid, "VmRSS")
            _reset_peak(pid)
            response = await http.post("/media/upload", content=file_chunks(source), headers={
                **alice.headers, "Content-Type": "application/octet-stream",
                "Content-Length": str(GIB)})
            assert response.status_code == 201, response.text
            peak_kb = _status_kb(pid, "VmHWM")
        growth = (peak_kb - baseline_kb) * 1024
        print(f"RSS growth during the 1 GiB upload: {growth / MB:.1f} MB")
        assert growth < 64 * MB, f"RSS grew by {growth / MB:.1f} MB during a 1 GiB upload"
        assert response.json()["sha256"] == await trio.to_thread.run_sync(sha256_of_file, source)
        assert response.json()["size"] == GIB
    finally:
        server.kill()
        # The stored GiB is real disk (the source is sparse): not left to pytest's
        # retention of old temp dirs.
        shutil.rmtree(tmp_path / "data", ignore_errors=True)
