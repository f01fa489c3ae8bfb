"""`chatd admin` as an operator runs it: the CLI as a subprocess, against a real shard
over HTTP (its admin token), and offline against a stopped shard's data directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from chatd.server import RunningServer
from tests.conftest import ServerFactory
from tests.helpers import PASSWORD, Account, ServerProcess, assert_error, login, new_account
from tests.media_files import png

ADMIN = "admin-cli-token-0123456789abcdef"


async def chatd_admin(*args: str, token: str | None = ADMIN, stdin: str = "",
                      cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m chatd admin ARGS` in a worker thread (the shard in this Trio run keeps
    serving meanwhile); the token from the environment, as an operator gives it."""
    env = {key: value for key, value in os.environ.items() if key != "CHATD_ADMIN_TOKEN"}
    if token is not None:
        env["CHATD_ADMIN_TOKEN"] = token
    return await trio.to_thread.run_sync(partial(
        subprocess.run, [sys.executable, "-m", "chatd", "admin", *args], input=stdin,
        capture_output=True, text=True, timeout=120, env=env, cwd=cwd))


def answer(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    return json.loads(done.stdout)


@pytest.fixture
async def shard(start_server: ServerFactory) -> RunningServer:
    return await start_server(server={"admin_token": ADMIN})


@pytest.fixture
async def http(shard: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=shard.url, timeout=30) as client:
        yield client


async def login_status(http: httpx.AsyncClient, handle: str) -> httpx.Response:
    return await http.post("/login", json={"handle": handle, "password": PASSWORD,
                                           "device_name": "again"})


# -- online ----------------------------------------------------------------------------------


async def test_users_list_show_deactivate_reactivate_erase(
        shard: RunningServer, http: httpx.AsyncClient) -> None:
    alice = await new_account(http, "clialice")
    bob = await new_account(http, "clibob")
    url = ("--url", shard.url)

    listed = await chatd_admin("users", "list", "--handle", "CLIA", *url)
    assert listed.returncode == 0, listed.stderr
    assert alice.user_id in listed.stdout and "clialice" in listed.stdout
    assert "clibob" not in listed.stdout
    page = answer(await chatd_admin("users", "list", "--limit", "1", "--json", *url))
    assert [user["handle"] for user in page["users"]] == ["clialice"]
    rest = answer(await chatd_admin("users", "list", "--after", page["next_after"], "--json",
                                    *url))
    assert [user["user_id"] for user in rest["users"]] == [bob.user_id]

    shown = await chatd_admin("users", "show", alice.user_id, *url)
    assert shown.returncode == 0, shown.stderr
    assert "@clialice" in shown.stdout and "active" in shown.stdout
    assert "test device" in shown.stdout

    deactivated = answer(await chatd_admin("users", "deactivate", alice.user_id, "--json",
                                           *url))
    assert deactivated["user"]["status"] == "deactivated" and deactivated["devices"] == []
    assert_error(await login_status(http, "clialice"), 403, "account_deactivated")
    assert_error(await alice.get("/me"), 401)  # its token was revoked
    reactivated = await chatd_admin("users", "reactivate", alice.user_id, *url)
    assert reactivated.returncode == 0 and " active" in reactivated.stdout
    assert (await login_status(http, "clialice")).status_code == 200

    # Not confirmed: nothing happens.
    declined = await chatd_admin("users", "erase", alice.user_id, *url, stdin="no\n")
    assert declined.returncode == 1 and "not erased" in declined.stderr
    assert "clialice" in declined.stderr  # the prompt named whom
    assert (await login_status(http, "clialice")).status_code == 200
    erased = await chatd_admin("users", "erase", alice.user_id, "--yes", *url)
    assert erased.returncode == 0, erased.stderr
    assert erased.stdout.strip() == f"user {alice.user_id}: erased"
    assert_error(await login_status(http, "clialice"), 401)
    again = await new_account(http, "clialice")  # the handle is free
    assert again.user_id != alice.user_id
    gone = answer(await chatd_admin("users", "show", alice.user_id, "--json", *url))
    assert gone["user"]["status"] == "erased" and gone["user"]["handle"] == ""

    missing = await chatd_admin("users", "show", "12345", *url)
    assert missing.returncode == 1 and "404 unknown_user" in missing.stderr


async def test_users_export_writes_the_zip(shard: RunningServer, http: httpx.AsyncClient,
                                           tmp_path: Path) -> None:
    alice = await new_account(http, "cliexport")
    bob = await new_account(http)
    chat = await alice.direct_with(bob)
    assert (await alice.send(chat, "my words")).status_code == 201
    out = tmp_path / "alice.zip"
    done = await chatd_admin("users", "export", alice.user_id, "--out", str(out),
                             "--url", shard.url)
    assert done.returncode == 0, done.stderr
    assert str(out) in done.stdout
    with zipfile.ZipFile(out) as archive:
        assert json.loads(archive.read("profile.json"))["handle"] == "cliexport"
        bodies = [message["body"] for message in json.loads(archive.read("messages.json"))]
    assert bodies == ["my words"]
    assert out.stat().st_mode & 0o077 == 0  # personal data: the owner's only
    exists = await chatd_admin("users", "export", alice.user_id, "--out", str(out),
                               "--url", shard.url)
    assert exists.returncode == 2 and "exists" in exists.stderr
    default = await chatd_admin("users", "export", bob.user_id, "--url", shard.url,
                                cwd=tmp_path)
    assert default.returncode == 0, default.stderr
    assert zipfile.is_zipfile(tmp_path / f"export-{bob.user_id}.zip")


async def test_reports_abuse_queue_and_limits(shard: RunningServer,
                                              http: httpx.AsyncClient) -> None:
    spammer, victim = await new_account(http, "clispam"), await new_account(http)
    chat = await spammer.direct_with(victim)
    sent = await spammer.send(chat, "buy now")
    assert sent.status_code == 201, sent.text
    filed = await victim.post("/reports", {"conversation_id": chat, "seq": sent.json()["seq"],
                                           "reason": "spam", "note": "unsolicited"})
    assert filed.status_code == 201, filed.text
    report_id = filed.json()["report_id"]
    url = ("--url", shard.url)

    listed = await chatd_admin("reports", "list", *url)
    assert listed.returncode == 0, listed.stderr
    assert f"report {report_id}  open  spam" in listed.stdout and "buy now" in listed.stdout
    resolved = await chatd_admin("reports", "resolve", report_id, "--action", "uphold",
                                 "--note", "checked", *url)
    assert resolved.returncode == 0, resolved.stderr
    assert f"report {report_id}: resolved, uphold" in resolved.stdout
    assert answer(await chatd_admin("reports", "list", "--json", *url))["reports"] == []
    [done] = answer(await chatd_admin("reports", "list", "--status", "resolved", "--json",
                                      *url))["reports"]
    assert done["report_id"] == report_id and done["resolution_note"] == "checked"
    twice = await chatd_admin("reports", "resolve", report_id, "--action", "dismiss", *url)
    assert twice.returncode == 1 and "409 already_resolved" in twice.stderr

    limited = await chatd_admin("users", "limit", spammer.user_id, "--note", "spam", *url)
    assert limited.returncode == 0, limited.stderr
    assert "limited by admin" in limited.stdout
    queue = answer(await chatd_admin("abuse", "queue", "--json", *url))
    [listed_spammer] = [account for account in queue["accounts"]
                        if account["user_id"] == spammer.user_id]
    assert listed_spammer["limited"] is True
    text = await chatd_admin("abuse", "queue", *url)
    assert "clispam" in text.stdout and "yes (admin)" in text.stdout
    unlimited = answer(await chatd_admin("users", "unlimit", spammer.user_id, "--json", *url))
    assert unlimited["limited"] is False


async def test_media_quarantine_refuses_downloads(shard: RunningServer,
                                                  http: httpx.AsyncClient) -> None:
    alice = await new_account(http)
    response = await alice.http.post("/media/upload", content=png(), headers={
        **alice.headers, "Content-Type": "image/png"})
    assert response.status_code == 201, response.text
    media = response.json()
    assert (await alice.get(media["url"])).status_code == 200
    done = await chatd_admin("media", "quarantine", media["sha256"].upper(), "--reason",
                             "reported", "--url", shard.url)
    assert done.returncode == 0, done.stderr
    assert media["sha256"] in done.stdout
    assert_error(await alice.get(media["url"]), 451, "quarantined")
    bad = await chatd_admin("media", "quarantine", "abc", "--reason", "x", "--url", shard.url)
    assert bad.returncode == 1 and "400" in bad.stderr and "sha256" in bad.stderr


async def test_the_token_is_needed_checked_and_never_printed(shard: RunningServer) -> None:
    secret = "wrong-token-never-to-be-shown-0123456789"
    wrong = await chatd_admin("users", "list", "--url", shard.url, token=secret)
    assert wrong.returncode == 1 and "401" in wrong.stderr
    flag = await chatd_admin("users", "list", "--url", shard.url, "--admin-token", secret,
                             token=None)
    assert flag.returncode == 1 and "401" in flag.stderr
    for done in (wrong, flag):
        assert secret not in done.stdout + done.stderr
    right = await chatd_admin("users", "list", "--url", shard.url)
    assert right.returncode == 0 and ADMIN not in right.stdout + right.stderr
    missing = await chatd_admin("users", "list", "--url", shard.url, token=None)
    assert missing.returncode == 2 and "CHATD_ADMIN_TOKEN" in missing.stderr


async def test_a_shard_without_an_admin_token_has_no_admin_routes(
        start_server: ServerFactory) -> None:
    plain = await start_server()
    done = await chatd_admin("users", "list", "--url", plain.url)
    assert done.returncode == 1 and "server.admin_token" in done.stderr


async def test_bad_usage_exits_2(tmp_path: Path) -> None:
    for args in (["users"], ["users", "frobnicate"], ["users", "show"],
                 ["users", "show", "abc"], ["reports", "resolve", "1"],
                 ["reports", "resolve", "1", "--action", "ban"],
                 ["reports", "list", "--status", "closed"],
                 ["media", "quarantine", "ab" * 32],
                 ["users", "list", "--url", "http://x", "--data-dir", str(tmp_path)],
                 ["users", "list", "--config", str(tmp_path / "c.toml")],
                 ["promote"]):
        done = await chatd_admin(*args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert done.stderr.strip(), args
    nowhere = tmp_path / "nothing"
    done = await chatd_admin("users", "list", "--data-dir", str(nowhere), token=None)
    assert done.returncode == 2 and "holds no chatd database" in done.stderr
    assert not nowhere.exists()  # a typo does not make a new shard


# -- offline ---------------------------------------------------------------------------------


class Shard:
    """A shard as a process on a data directory that outlives it, started and stopped
    around the offline commands."""

    def __init__(self, tmp_path: Path) -> None:
        self.data = tmp_path / "data"
        self.logs = tmp_path
        self.starts = 0
        self.process: ServerProcess | None = None

    async def start(self) -> str:
        # A log per start: ServerProcess.ready() reads the first "serving" line in it.
        self.starts += 1
        self.process = ServerProcess(self.data, self.logs / f"server-{self.starts}.log",
                                     extra_env={"CHATD_SERVER_ADMIN_TOKEN": ADMIN})
        return await self.process.ready()

    def stop(self) -> None:
        assert self.process is not None
        assert self.process.terminate() == 0
        self.process = None


@pytest.fixture
async def stoppable(tmp_path: Path) -> AsyncIterator[Shard]:
    shard = Shard(tmp_path)
    yield shard
    if shard.process is not None:
        shard.process.kill()


async def offline(shard: Shard, *args: str, stdin: str = ""
                  ) -> subprocess.CompletedProcess[str]:
    return await chatd_admin(*args, "--data-dir", str(shard.data), token=None, stdin=stdin)


async def test_offline_list_show_deactivate_then_the_server_sees_it(
        stoppable: Shard) -> None:
    url = await stoppable.start()
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        alice = await new_account(http, "offalice")
        bob = await new_account(http, "offbob")
        await alice.direct_with(bob)
        running = await offline(stoppable, "users", "list")
        assert running.returncode == 1
        assert f"the shard at {stoppable.data} is running" in running.stderr
        assert "--url" in running.stderr
    stoppable.stop()

    listed = answer(await offline(stoppable, "users", "list", "--json"))
    assert [user["handle"] for user in listed["users"]] == ["offalice", "offbob"]
    shown = answer(await offline(stoppable, "users", "show", alice.user_id, "--json"))
    assert shown["user"]["handle"] == "offalice" and shown["conversations"] == 1
    assert [device["name"] for device in shown["devices"]] == ["test device"]
    text = await offline(stoppable, "users", "deactivate", alice.user_id)
    assert text.returncode == 0, text.stderr
    assert "deactivated" in text.stdout and "devices        0" in text.stdout
    limited = await offline(stoppable, "users", "limit", bob.user_id, "--note", "offline")
    assert limited.returncode == 0 and "limited by admin" in limited.stdout
    refused = await offline(stoppable, "status")
    assert refused.returncode == 2 and "--url" in refused.stderr
    with_token = await chatd_admin("users", "list", "--data-dir", str(stoppable.data),
                                   "--admin-token", ADMIN, token=None)
    assert with_token.returncode == 2 and ADMIN not in with_token.stderr

    url = await stoppable.start()
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        assert_error(await login_status(http, "offalice"), 403, "account_deactivated")
        assert_error(await http.get("/me", headers=alice.headers), 401)
        bob_again: Account = await login(http, "offbob")
        queue = await http.get("/admin/abuse", headers={"Authorization": f"Bearer {ADMIN}"})
        [account] = queue.json()["accounts"]
        assert account["user_id"] == bob_again.user_id and account["limited"]
    stoppable.stop()
    reactivated = await offline(stoppable, "users", "reactivate", alice.user_id)
    assert reactivated.returncode == 0, reactivated.stderr
    url = await stoppable.start()
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        assert (await login_status(http, "offalice")).status_code == 200


async def test_offline_erase_and_export_of_a_single_shard_user(
        stoppable: Shard, tmp_path: Path) -> None:
    url = await stoppable.start()
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        alice = await new_account(http, "eraseme")
        bob = await new_account(http)
        chat = await alice.direct_with(bob)
        assert (await alice.send(chat, "remember this")).status_code == 201
    stoppable.stop()

    out = tmp_path / "offline.zip"
    exported = await offline(stoppable, "users", "export", alice.user_id, "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    with zipfile.ZipFile(out) as archive:
        assert json.loads(archive.read("profile.json"))["handle"] == "eraseme"
        assert [m["body"] for m in json.loads(archive.read("messages.json"))] == \
            ["remember this"]

    declined = await offline(stoppable, "users", "erase", alice.user_id)  # stdin: EOF
    assert declined.returncode == 1 and "not erased" in declined.stderr
    erased = await offline(stoppable, "users", "erase", alice.user_id, "--yes")
    assert erased.returncode == 0, erased.stderr
    assert erased.stdout.strip() == f"user {alice.user_id}: erased"

    url = await stoppable.start()
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        assert_error(await login_status(http, "eraseme"), 401)
        await new_account(http, "eraseme")  # the handle is free
        bob_again = await login(http, bob.handle)
        history = await bob_again.get(f"/messages/{chat}")
        assert history.status_code == 200, history.text
        # Her message is a tombstone, and she left the chat with a member_erased entry.
        assert "remember this" not in history.text and "member_erased" in history.text
        shown = await http.get(f"/admin/users/{alice.user_id}",
                               headers={"Authorization": f"Bearer {ADMIN}"})
        assert shown.json()["user"]["status"] == "erased"
