"""`python -m bench.backup` runs, small, so it never rots (docs/operations.md quotes it)."""

from __future__ import annotations

import sys

import trio


async def test_the_backup_benchmark_runs() -> None:
    result = await trio.run_process([sys.executable, "-m", "bench.backup", "--mb", "1"],
                                    capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    line = result.stdout.decode()
    assert "1 MB written" in line and "loop stalled" in line and "stream" in line
