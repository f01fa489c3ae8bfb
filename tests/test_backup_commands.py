"""`chatd backup` and `chatd restore` as an operator runs them: exit statuses, what they
print, and that the admin token never appears in anything they print."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import pytest
import trio

from chatd.cli import main
from tests.conftest import ServerFactory
from tests.helpers import new_account
from tests.storage.test_restore import take_backup

ADMIN = "cli-admin-token-0123456789"


async def chatd(*args: str, token: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """`python -m chatd ARGS` in a child process (the shard runs in this test's Trio run)."""
    env = {key: value for key, value in os.environ.items() if key != "CHATD_ADMIN_TOKEN"}
    if token is not None:
        env["CHATD_ADMIN_TOKEN"] = token
    return await trio.run_process([sys.executable, "-m", "chatd", *args], env=env,
                                  capture_stdout=True, capture_stderr=True, check=False)


async def test_backup_then_restore_print_what_they_did(start_server: ServerFactory,
                                                       tmp_path: Path) -> None:
    running = await start_server(server={"admin_token": ADMIN})
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        await alice.send(await alice.direct_with(bob), "hello")
    backup = await chatd("backup", str(tmp_path / "backup"), "--url", running.url, token=ADMIN)
    assert backup.returncode == 0, backup.stderr
    out = backup.stdout.decode()
    assert f"backed up shard local from {running.url}" in out
    assert "1 conversations, 1 entries" in out
    restored = await chatd("restore", str(tmp_path / "backup"), "--data",
                           str(tmp_path / "restored"))
    assert restored.returncode == 0, restored.stderr
    out = restored.stdout.decode()
    assert "restored shard local" in out
    assert f"chatd serve --data {tmp_path / 'restored'} --shard local" in out
    for result in (backup, restored):
        assert ADMIN not in (result.stdout + result.stderr).decode()


async def test_a_wrong_token_fails_without_echoing_it(start_server: ServerFactory,
                                                      tmp_path: Path) -> None:
    running = await start_server(server={"admin_token": ADMIN})
    wrong = "wrong-token-must-not-be-printed"
    for how in (["--admin-token", wrong], []):
        result = await chatd("backup", str(tmp_path / "backup"), "--url", running.url, *how,
                             token=wrong)
        assert result.returncode == 1
        assert b"answered 401" in result.stderr
        assert wrong.encode() not in result.stdout + result.stderr
        assert not (tmp_path / "backup").exists()


def test_backup_needs_a_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CHATD_ADMIN_TOKEN", raising=False)
    assert main(["backup", str(tmp_path / "backup")]) == 2
    assert "$CHATD_ADMIN_TOKEN" in capsys.readouterr().err


def test_backup_into_a_directory_holding_anything_is_a_usage_error(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CHATD_ADMIN_TOKEN", ADMIN)
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "old").write_text("x")
    assert main(["backup", str(tmp_path / "backup"), "--url", "http://127.0.0.1:9"]) == 2
    assert "is not empty" in capsys.readouterr().err


@pytest.fixture
def backup_dir(tmp_path: Path) -> Path:
    """A backup directory as `chatd backup` leaves it (made without a server: `main`
    blocks, so these tests run no shard in their Trio run)."""
    tar = trio.run(take_backup, tmp_path / "data")
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as archive:
        archive.extractall(tmp_path / "backup", filter="data")
    return tmp_path / "backup"


def test_restore_into_a_directory_holding_anything_is_a_usage_error(
        backup_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "restored").mkdir()
    (tmp_path / "restored" / "LOCK").write_text("")
    assert main(["restore", str(backup_dir), "--data", str(tmp_path / "restored")]) == 2
    assert "is not empty" in capsys.readouterr().err


def test_restore_of_a_tampered_backup_is_refused(backup_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    manifest = json.loads((backup_dir / "manifest.json").read_text())
    manifest["files"] = manifest["files"][1:]  # one file is no longer accounted for
    (backup_dir / "manifest.json").write_text(json.dumps(manifest))
    assert main(["restore", str(backup_dir), "--data", str(tmp_path / "restored")]) == 1
    assert "refused" in capsys.readouterr().err
    assert not (tmp_path / "restored").exists()
