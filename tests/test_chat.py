from __future__ import annotations

import os
import subprocess
import sys

import pytest
import trio

from chatd.chat import Command, Names, format_event, parse_line
from chatd.client import ChatClient
from chatd.server import RunningServer
from tests.helpers import PASSWORD


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


async def test_chat_command_talks_to_a_real_server(server: RunningServer) -> None:
    async with ChatClient(server.url) as bob:
        await bob.register("bob_t", PASSWORD, "Bob")
        await bob.login("bob_t", PASSWORD)
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "chatd", "chat", "--url", server.url, "--handle", "alice_t",
             "--register"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, "CHATD_PASSWORD": PASSWORD})
        assert process.stdin is not None and process.stdout is not None
        output = b""

        async def expect(text: bytes) -> None:
            nonlocal output
            with trio.fail_after(15):
                while text not in output:
                    chunk = await process.stdout.receive_some()  # type: ignore[union-attr]
                    assert chunk, output.decode()
                    output += chunk

        try:
            await expect(b"logged in as alice_t")
            await process.stdin.send_all(b"/to bob_t\nhello from the terminal\n")
            await expect(b"now talking in @bob_t")
            async with bob.connect() as live:
                with trio.fail_after(10):
                    while True:
                        event = await live.next_event()
                        if event["type"] == "message":
                            break
                assert event["message"]["body"] == "hello from the terminal"
                await live.send(event["message"]["conversation_id"], "hi, terminal")
                await expect(b"[@bob_t] bob_t: hi, terminal")
            await process.stdin.send_all(b"/quit\n")
            with trio.fail_after(10):
                assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.stdin.aclose()
            await process.stdout.aclose()
