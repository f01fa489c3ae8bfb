"""`media`: upload and download throughput, server CPU per MB, RSS during the transfer,
and ranged reads of 64 KiB per second.

One user uploads `size` bytes (1 GiB by default) as a raw streamed body, downloads it
whole, then reads `ranged_reads` random 64 KiB ranges with `concurrency` requests in
flight. The server's RSS is sampled every 20 ms during each transfer (and its peak read
from VmHWM after a reset); its CPU comes from /proc. The body is a random 4 MiB block
repeated, so nothing about it is compressible or special.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import trio

from bench.harness import Result, Target
from bench.serverproc import precise_cpu_seconds, rss_bytes

PASSWORD = "bench password"
MB = 1_000_000
RANGE = 64 * 1024
BLOCK = os.urandom(4 * 1024 * 1024)


def _peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak(pid: int) -> None:
    # VmHWM := current RSS. (Another user's process refuses: the sampled peak stands.)
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


async def _body(size: int) -> AsyncIterator[bytes]:
    sent = 0
    while sent < size:
        chunk = BLOCK[:min(len(BLOCK), size - sent)]
        sent += len(chunk)
        yield chunk


def _expected_sha256(size: int) -> str:
    digest = hashlib.sha256()
    sent = 0
    while sent < size:
        chunk = BLOCK[:min(len(BLOCK), size - sent)]
        digest.update(chunk)
        sent += len(chunk)
    return digest.hexdigest()


class _Sampler:
    """The server's RSS every 20 ms while a transfer runs."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.peak = 0

    async def run(self, done: trio.Event) -> None:
        if self.pid is None:
            return
        while not done.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            with trio.move_on_after(0.02):
                await done.wait()


async def _measured(target: Target, transfer: object) -> tuple[float, float, int]:
    """(seconds, server CPU seconds, peak RSS bytes) of `await transfer()`."""
    pid = target.pid
    if pid is not None:
        _reset_peak(pid)
    cpu_before = precise_cpu_seconds(pid) if pid is not None else 0.0
    sampler = _Sampler(pid)
    done = trio.Event()
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sampler.run, done)
        try:
            await transfer()  # type: ignore[operator]
        finally:
            done.set()
    seconds = time.perf_counter() - started
    cpu = (precise_cpu_seconds(pid) - cpu_before) if pid is not None else 0.0
    peak = max(sampler.peak, _peak_rss_bytes(pid)) if pid is not None else 0
    return seconds, cpu, peak


class _RawConnection:
    """One HTTP/1.1 keep-alive connection that only GETs, reading bodies into a reused
    buffer: a client cheap enough that the server's cost is what is measured."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    @classmethod
    async def open(cls, url: str) -> _RawConnection:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        return cls(await trio.open_tcp_stream(host, int(port)))

    async def __aenter__(self) -> _RawConnection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stream.aclose()

    async def get(self, path: str, authorization: str, byte_range: tuple[int, int] | None,
                  *, count_only: bool = False) -> int:
        """GET `path` (a range of it); the body's length once it is all read."""
        head = f"GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: {authorization}\r\n"
        if byte_range is not None:
            head += f"Range: bytes={byte_range[0]}-{byte_range[1]}\r\n"
        await self._stream.send_all((head + "\r\n").encode())
        while b"\r\n\r\n" not in self._buffer:
            data = await self._stream.receive_some(1 << 20)
            if not data:
                raise RuntimeError("the server closed the connection")
            self._buffer += data
        end = self._buffer.index(b"\r\n\r\n")
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        del self._buffer[:end + 4]
        if lines[0].split(" ")[1] not in ("200", "206"):
            raise RuntimeError(f"download answered {lines[0]}")
        length = next(int(line.split(":", 1)[1]) for line in lines[1:]
                      if line.lower().startswith("content-length:"))
        remaining = length - len(self._buffer)
        del self._buffer[:length]
        while remaining > 0:
            data = await self._stream.receive_some(min(1 << 20, remaining) if count_only
                                                   else remaining)
            if not data:
                raise RuntimeError("the server closed the connection mid-body")
            remaining -= len(data)
        return length


async def media(target: Target, *, size: int, ranged_reads: int,
                concurrency: int = 8) -> Result:
    limits = httpx.Limits(max_connections=concurrency + 2,
                          max_keepalive_connections=concurrency + 2)
    async with httpx.AsyncClient(base_url=target.url, timeout=600, limits=limits) as http:
        handle = f"media{time.monotonic_ns() % 10**9}"
        await http.post("/register", json={"handle": handle, "password": PASSWORD,
                                           "display_name": handle})
        login = (await http.post("/login", json={"handle": handle,
                                                "password": PASSWORD})).json()
        auth = {"Authorization": f"Bearer {login['token']}"}
        # Warm the path (imports, first allocations) so the measured run is steady.
        warm = await http.post("/media/upload", content=BLOCK[:100_000], headers={
            **auth, "Content-Type": "application/octet-stream"})
        warm.raise_for_status()
        rss_before = rss_bytes(target.pid) if target.pid is not None else 0
        uploaded: dict[str, object] = {}

        async def upload() -> None:
            response = await http.post("/media/upload", content=_body(size), headers={
                **auth, "Content-Type": "application/octet-stream",
                "Content-Length": str(size)})
            response.raise_for_status()
            uploaded.update(response.json())

        up_seconds, up_cpu, up_peak = await _measured(target, upload)
    url = str(uploaded["url"])
    token = auth["Authorization"]
    # Downloads on raw keep-alive connections of their own: httpx costs more CPU per
    # request than the server does (it would measure the client), and a connection whose
    # first request is a media download is the one the direct path serves
    # (web/media_downloads.py; chatd.client keeps one for downloads too).
    received = 0

    async def download() -> None:
        nonlocal received
        async with await _RawConnection.open(target.url) as connection:
            received = await connection.get(url, token, None, count_only=True)

    down_seconds, down_cpu, down_peak = await _measured(target, download)
    reads = 0
    offsets = [random.randrange(0, size - RANGE) for _ in range(ranged_reads)]

    async def ranged(worker: int) -> None:
        nonlocal reads
        async with await _RawConnection.open(target.url) as connection:
            for offset in offsets[worker::concurrency]:
                got = await connection.get(url, token, (offset, offset + RANGE - 1))
                if got != RANGE:
                    raise RuntimeError(f"ranged read: {got} bytes")
                reads += 1

    async def all_ranged() -> None:
        async with trio.open_nursery() as nursery:
            for worker in range(concurrency):
                nursery.start_soon(ranged, worker)

    range_seconds, range_cpu, _ = await _measured(target, all_ranged)
    hash_ok = uploaded["sha256"] == await trio.to_thread.run_sync(_expected_sha256, size)
    megabytes = size / MB
    figures = {
        "upload_mb_s": round(megabytes / up_seconds, 1),
        "download_mb_s": round(megabytes / down_seconds, 1),
        "upload_server_cpu_ms_per_mb": round(up_cpu / megabytes * 1000, 2),
        "download_server_cpu_ms_per_mb": round(down_cpu / megabytes * 1000, 2),
        "rss_before_mb": round(rss_before / MB, 1),
        "rss_peak_upload_mb": round(up_peak / MB, 1),
        "rss_peak_download_mb": round(down_peak / MB, 1),
        "rss_growth_upload_mb": round((up_peak - rss_before) / MB, 1),
        "ranged_64k_reads_per_s": round(reads / range_seconds),
        "ranged_server_cpu_us_per_read": round(range_cpu / max(reads, 1) * 1e6),
        "sha256_matches": hash_ok,
        # The harness's loss check: every byte sent came back.
        "lost": 0 if received == size and hash_ok else 1,
    }
    return Result("media", {"bytes": size, "ranged_reads": ranged_reads,
                            "concurrency": concurrency}, figures)
