"""`chatd.client`'s media calls against a real server: upload from a path (streamed),
download with resume, a corrupt partial file caught by the sha256."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatd.client import ApiError, ChatClient
from chatd.server import RunningServer
from tests.helpers import PASSWORD, fresh_handle
from tests.media_files import random_bytes


async def test_upload_a_path_and_resume_a_download(server: RunningServer,
                                                   tmp_path: Path) -> None:
    data = random_bytes(3_000_000)
    source = tmp_path / "video.bin"
    source.write_bytes(data)
    async with ChatClient(server.url) as client:
        handle = fresh_handle()
        await client.register(handle, PASSWORD, handle)
        await client.login(handle, PASSWORD)
        media = await client.upload(source, "application/octet-stream")
        assert media["filename"] == "video.bin" and media["size"] == len(data)
        target = tmp_path / "copy.bin"
        partial = tmp_path / "copy.bin.part"
        # An interrupted download: the first megabyte is there; only the rest is asked.
        partial.write_bytes(data[:1_000_000])
        assert (await client.download(media["media_id"], target)).read_bytes() == data
        assert not partial.exists()
        # A partial file that is not a prefix of the media is caught by the hash.
        (tmp_path / "bad.bin.part").write_bytes(b"x" * 10)
        with pytest.raises(ApiError) as caught:
            await client.download(media["media_id"], tmp_path / "bad.bin")
        assert caught.value.code == "corrupt_download"
        assert not (tmp_path / "bad.bin.part").exists()  # the next try starts clean
        # A partial file longer than the media: started again from scratch.
        (tmp_path / "again.bin.part").write_bytes(data + b"more")
        again = await client.download(media["media_id"], tmp_path / "again.bin")
        assert again.read_bytes() == data
