from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from chatd.chat import Command, Names, format_event, parse_line
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
])
def test_parse_line(line: str, expected: Command) -> None:
    assert parse_line(line) == expected


@pytest.mark.parametrize("line", ["/to", "/to a b", "/group solo", "/history many", "/dance"])
def test_parse_line_explains_mistakes(line: str) -> None:
    command = parse_line(line)
    assert command.name == "error" and command.args[0]


def test_format_event() -> None:
    names = Names(users={"1": "alice"}, conversations={"9": "@alice"})
    message = {"conversation_id": "9", "sender_id": "1", "content_type": "text/plain",
               "body": "hi", "seq": 1}
    assert format_event({"type": "message", "message": message}, names) == "[@alice] alice: hi"
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
async def terminal(server: RunningServer, handle: str) -> AsyncIterator[Terminal]:
    """A logged-in `chatd chat --register` as `handle`; it must exit 0 on /quit."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "chatd", "chat", "--url", server.url, "--handle", handle,
         "--register"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "CHATD_PASSWORD": PASSWORD})
    chat = Terminal(process)
    try:
        await chat.expect(f"logged in as {handle}".encode())
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
            await chat.expect(b"[@bob_t] bob_t: hi, terminal")


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
        "[@alice] alice: look\n    📎 p.jpg (image, 8.2 KB, 800x600) media 77")


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
