from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from chatd.chat import Command, Names, complete_mention, format_event, parse_line
from chatd.client import ChatClient
from chatd.server import RunningServer
from tests.helpers import PASSWORD
from tests.media_files import png


@pytest.mark.parametrize("line, expected", [
    ("hello there", Command("say", ("hello there",))),
    ("   ", Command("noop")),
    ("/to bob", Command("to", ("bob",))),
    ("/group team bob carol", Command("group", ("team", "bob", "carol"))),
    ("/history 5", Command("history", ("5",))),
    ("/quit", Command("quit")),
    ("/reply 5 sure,  why not", Command("reply", ("5", "sure,  why not"))),
    ("/react 5 👍", Command("react", ("5", "👍"))),
    ("/unreact 5 👍", Command("unreact", ("5", "👍"))),
    ("/edit 12 fixed the typo", Command("edit", ("12", "fixed the typo"))),
    ("/forward 3 111 222", Command("forward", ("3", "111", "222"))),
    ("/pin 4", Command("pin", ("4",))),
    ("/unpin 4", Command("unpin", ("4",))),
])
def test_parse_line(line: str, expected: Command) -> None:
    assert parse_line(line) == expected


@pytest.mark.parametrize("line", [
    "/to", "/to a b", "/group solo", "/history many", "/dance", "/reply", "/reply 5",
    "/reply five text", "/reply 0 text", "/react 5", "/edit x text", "/forward 3",
    "/pin", "/pin 4 extra", "/unpin -1"])
def test_parse_line_explains_mistakes(line: str) -> None:
    command = parse_line(line)
    assert command.name == "error" and command.args[0]


def test_format_event() -> None:
    names = Names(users={"1": "alice"}, conversations={"9": "@alice"})
    message = {"conversation_id": "9", "sender_id": "1", "content_type": "text/plain",
               "body": "hi", "seq": 1}
    assert format_event({"type": "message", "message": message}, names) == \
        "[@alice] #1 alice: hi"
    assert format_event({"type": "presence", "user_id": "1", "online": False,
                         "last_seen": 5}, names) == "* alice is offline"
    assert format_event({"type": "receipt"}, names) is None


class Terminal:
    """`chatd chat` in a child process: lines in, output awaited by text."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.stdin = process.stdin
        self.stdout = process.stdout
        self.output = b""

    async def type(self, text: str) -> None:
        await self.stdin.send_all(text.encode())

    async def expect(self, text: bytes) -> None:
        with trio.fail_after(15):
            while text not in self.output:
                chunk = await self.stdout.receive_some()
                assert chunk, self.output.decode()
                self.output += chunk


@asynccontextmanager
async def terminal(server: RunningServer, handle: str, *, env: dict[str, str] | None = None,
                   ready: bytes | None = None) -> AsyncIterator[Terminal]:
    """A logged-in `chatd chat --register` as `handle` (with `env` added to its
    environment), once it printed `ready`; it must exit 0 on /quit."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "chatd", "chat", "--url", server.url, "--handle", handle,
         "--register"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "CHATD_PASSWORD": PASSWORD, **(env or {})})
    chat = Terminal(process)
    try:
        await chat.expect(ready or f"logged in as {handle}".encode())
        yield chat
        await chat.type("/quit\n")
        with trio.fail_after(10):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await chat.stdin.aclose()
        await chat.stdout.aclose()


async def test_chat_command_talks_to_a_real_server(server: RunningServer) -> None:
    async with ChatClient(server.url) as bob, terminal(server, "alice_t") as chat:
        await bob.register("bob_t", PASSWORD, "Bob")
        await bob.login("bob_t", PASSWORD)
        await chat.type("/to bob_t\nhello from the terminal\n")
        await chat.expect(b"now talking in @bob_t")
        async with bob.connect() as live:
            with trio.fail_after(10):
                while (event := await live.next_event())["type"] != "message":
                    pass
            assert event["message"]["body"] == "hello from the terminal"
            await live.send(event["message"]["conversation_id"], "hi, terminal")
            await chat.expect(b"bob_t: hi, terminal")


def test_replies_forwards_edits_reactions_and_mentions_are_shown() -> None:
    names = Names(users={"1": "alice", "2": "bob"}, conversations={"9": "team"})

    def shown(**fields: object) -> str | None:
        message = {"conversation_id": "9", "sender_id": "2", "content_type": "text/plain",
                   "body": "hi @alice", "seq": 4, **fields}
        return format_event({"type": "message", "message": message}, names, me="1")

    assert shown() == "[team] #4 bob: hi @alice"
    assert shown(mentions=["1"]) == "[team] #4 bob: hi @alice  ← mentions you"
    assert shown(mentions=["3"]) == "[team] #4 bob: hi @alice"
    assert shown(reply_to=2, quote={"sender_id": "1", "content_type": "text/plain",
                                    "text": "lunch?"}) == (
        '[team] #4 bob: hi @alice\n    ↳ replying to #2 alice: "lunch?"')
    assert shown(reply_to=2, quote={"sender_id": "1", "content_type": "chatd/deleted",
                                    "deleted": True}).endswith(
        "↳ replying to #2 alice: (deleted)")
    assert shown(reply_to=2, quote={"sender_id": "1", "content_type": "application/x-olm"}
                 ).endswith("↳ replying to #2 alice: <application/x-olm>")
    assert shown(forwarded=True) == "[team] #4 bob: (forwarded) hi @alice"
    assert shown(forwarded=True, forwarded_many=True) == (
        "[team] #4 bob: (forwarded many times) hi @alice")
    assert shown(edited_at=99) == "[team] #4 bob: hi @alice (edited)"
    assert shown(reactions={"👍": {"count": 2, "me": True}, "❤️": {"count": 1}}) == (
        "[team] #4 bob: hi @alice\n    👍 2 (you)  ❤️ 1")
    assert shown(content_type="chatd/deleted", body="") == "[team] #4 bob: (deleted)"
    assert shown(content_type="chatd/reaction", body={"target": 2, "emoji": "🎉"}) == (
        "[team] #4 * bob reacted 🎉 to #2")
    assert shown(content_type="chatd/reaction", body={"target": 2, "emoji": ""}) == (
        "[team] #4 * bob took back a reaction to #2")
    assert shown(content_type="chatd/edit", body={"target": 2, "body": "new"}) == (
        "[team] #4 * bob edited #2: new")
    assert shown(content_type="chatd/pin", body={"target": 2}) == "[team] #4 * bob pinned #2"


def test_mentions_complete_from_the_members_handles() -> None:
    handles = ["alice", "alfred", "bob"]
    assert complete_mention("hi @al", handles) == ["@alfred", "@alice"]
    assert complete_mention("hi @AL", handles) == ["@alfred", "@alice"]
    assert complete_mention("@", handles) == ["@alfred", "@alice", "@bob"]
    assert complete_mention("hi @bob", handles) == ["@bob"]
    assert complete_mention("hi al", handles) == []
    assert complete_mention("hi @al ", handles) == []  # the word is finished
    assert complete_mention("", handles) == []


async def test_reply_and_forward_from_the_terminal(server: RunningServer) -> None:
    async with ChatClient(server.url) as bob, terminal(server, "alice_r") as chat:
        await bob.register("bob_r", PASSWORD, "Bob")
        await bob.login("bob_r", PASSWORD)
        await chat.type("/to bob_r\nwhere shall we eat?\n")
        await chat.expect(b"now talking in @bob_r")
        async with bob.connect() as live:
            with trio.fail_after(10):
                while (event := await live.next_event())["type"] != "message":
                    pass
            conversation = event["message"]["conversation_id"]
            question = event["message"]["seq"]
            await bob.accept_request(conversation)
            await live.send(conversation, "@alice_r the usual place?", reply_to=question)
            await chat.expect(b"bob_r: @alice_r the usual place?  \xe2\x86\x90 mentions you")
            await chat.expect(f'replying to #{question} alice_r: "where shall we eat?"'
                              .encode())
            await chat.type(f"/reply {question + 1} fine by me\n")
            with trio.fail_after(10):
                while (event := await live.next_event())["type"] != "message":
                    pass
            assert event["message"]["body"] == "fine by me"
            assert event["message"]["reply_to"] == question + 1
            assert event["message"]["quote"]["text"] == "@alice_r the usual place?"
            group = await bob.create_group("lunch", [])
            await bob.request("POST", f"/groups/{group['conversation_id']}/add",
                              {"user_ids": [event["message"]["sender_id"]]})
            await chat.type(f"/forward {question} {group['conversation_id']} 12345\n")
            await chat.expect(b"* forwarded to")
            await chat.expect(b"! 12345: unknown_conversation")
            with trio.fail_after(10):
                while (event := await live.next_event())["type"] != "message" \
                        or event["message"]["conversation_id"] != group["conversation_id"] \
                        or event["message"]["content_type"] != "text/plain":
                    pass
            assert event["message"]["forwarded"] is True
            assert event["message"]["body"] == "where shall we eat?"
            await chat.type("/reply 99999 into the void\n")
            await chat.expect(b"! unknown_message")
            await chat.type(f"/open {group['conversation_id']}\n/history 5\n")
            await chat.expect(b"alice_r: (forwarded) where shall we eat?")


def _type_on_a_terminal(url: str, handle: str, lines: list[bytes]) -> bytes:
    """Run `chatd chat` on a pseudo-terminal, type `lines` (a pause after each), and
    return everything it wrote (blocking: run it in a thread)."""
    controller, terminal_end = pty.openpty()
    process = subprocess.Popen(
        # --no-e2e: on a terminal the client would ask for an E2E passphrase, and this
        # test reads the plaintext body the other side gets.
        [sys.executable, "-m", "chatd", "chat", "--url", url, "--handle", handle,
         "--register", "--no-e2e"], stdin=terminal_end, stdout=terminal_end,
        stderr=terminal_end,
        env={**os.environ, "CHATD_PASSWORD": PASSWORD}, close_fds=True)
    os.close(terminal_end)
    output = b""

    def read_until(needle: bytes, within: float = 15.0) -> None:
        nonlocal output
        deadline = time.monotonic() + within
        while needle not in output and time.monotonic() < deadline:
            if select.select([controller], [], [], 0.1)[0]:
                try:
                    output += os.read(controller, 4096)
                except OSError:
                    return

    try:
        read_until(b"logged in as")
        for line in lines:
            os.write(controller, line)
            read_until(b"now talking in" if line.startswith(b"/to") else b"\x00", 1.0)
        os.write(controller, b"/quit\n")
        process.wait(10)
        read_until(b"\x00", 0.5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)
    return output


async def test_tab_completes_the_handles_of_members_on_a_terminal(server: RunningServer,
                                                                  ) -> None:
    async with ChatClient(server.url) as bob:
        await bob.register("bobby_tab", PASSWORD, "Bob")
        await bob.login("bobby_tab", PASSWORD)
        output = await trio.to_thread.run_sync(
            _type_on_a_terminal, server.url, "alice_tab",
            [b"/to bobby_tab\n", b"see @bob\t", b" now\n"])
        assert b"now talking in @bobby_tab" in output, output
        async with bob.connect() as live:
            with trio.fail_after(10):
                while (event := await live.next_event())["type"] != "message":
                    pass
        # Completed to the member's handle, and so resolved to them as a mention.
        assert event["message"]["body"] == "see @bobby_tab now"
        assert bob.credentials is not None
        assert event["message"]["mentions"] == [bob.credentials.user_id]


async def test_react_and_edit_from_the_terminal(server: RunningServer) -> None:
    async with ChatClient(server.url) as bob, terminal(server, "alice_e") as chat:
        await bob.register("bob_e", PASSWORD, "Bob")
        await bob.login("bob_e", PASSWORD)
        await chat.type("/to bob_e\nsee you at 8\n")
        await chat.expect(b"now talking in @bob_e")
        async with bob.connect() as live:
            with trio.fail_after(10):
                while (event := await live.next_event())["type"] != "message":
                    pass
            conversation = event["message"]["conversation_id"]
            seq = event["message"]["seq"]
            await bob.accept_request(conversation)
            await chat.type(f"/edit {seq} see you at 9\n/react {seq} 👍\n")
            await chat.type(f"/pin {seq}\n")
            await bob.react(conversation, seq, "🎉")
            await chat.expect(f"* bob_e reacted 🎉 to #{seq}".encode())
            with trio.fail_after(10):
                while True:
                    page = await bob.history(conversation, after=0)
                    [message] = [m for m in page["messages"] if m["seq"] == seq]
                    conv = await bob.request("GET", f"/conversations/{conversation}")
                    if message.get("edited_at") and len(message.get("reactions", {})) == 2 \
                            and conv["pins"] == [seq]:
                        break
                    await trio.sleep(0.05)
            assert message["body"] == "see you at 9"
            await chat.type("/history 10\n")
            await chat.expect(b"alice_e: see you at 9 (edited)\n    ")
            await chat.expect("👍 1 (you)".encode())
            await chat.type(f"/unreact {seq} 👍\n/edit {seq + 100} nope\n")
            await chat.expect(b"! unknown_message")


def test_send_file_takes_the_rest_of_the_line() -> None:
    assert parse_line("/send-file ~/My Photos/a b.jpg") == Command(
        "send-file", ("~/My Photos/a b.jpg",))
    assert parse_line("/send-file").name == "error"


def test_attachments_are_shown() -> None:
    names = Names(users={"1": "alice"}, conversations={"9": "@alice"})
    message = {"conversation_id": "9", "sender_id": "1", "content_type": "text/plain",
               "body": "look", "seq": 1, "attachments": [{
                   "media_id": "77", "kind": "image", "content_type": "image/jpeg",
                   "size": 8400, "sha256": "ab" * 32, "filename": "p.jpg", "width": 800,
                   "height": 600, "thumbnails": [96, 320, 640]}]}
    assert format_event({"type": "message", "message": message}, names) == (
        "[@alice] #1 alice: look\n    📎 p.jpg (image, 8.2 KB, 800x600) media 77")


async def test_send_file_from_the_terminal(server: RunningServer, tmp_path: Path) -> None:
    data = png()
    path = tmp_path / "a chart.png"
    path.write_bytes(data)
    async with ChatClient(server.url) as bob, terminal(server, "alice_f") as chat:
        await bob.register("bob_f", PASSWORD, "Bob")
        await bob.login("bob_f", PASSWORD)
        await chat.type(f"/to bob_f\n/send-file {path}\n")
        await chat.expect(b"* sent a chart.png")
        async with bob.connect() as live:
            with trio.fail_after(10):
                while (event := await live.next_event())["type"] != "message":
                    pass
            [attachment] = event["message"]["attachments"]
            assert attachment["filename"] == "a chart.png"
            saved = await bob.download(attachment["media_id"], tmp_path / "got.png")
            assert saved.read_bytes() == data
            # And the terminal shows what it receives.
            media = await bob.upload(data, "image/png", filename="back.png")
            await bob.send(event["message"]["conversation_id"], "back",
                           attachments=[media["media_id"]])
            await chat.expect(b"back.png (image")
