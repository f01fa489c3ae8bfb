"""`chatd chat` with end-to-end encryption: two terminals over a real server talk in an
encrypted chat (the server holds ciphertext only), compare safety numbers, and a
restarted terminal comes back as the same device. And the pure pieces alone."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path

from chatd.chat import Command, parse_line
from chatd.client import ChatClient
from chatd.e2e.terminal import state_dir_for
from chatd.server import RunningServer
from tests.helpers import PASSWORD
from tests.test_chat import Terminal, terminal
from tests.web.test_compact import files_holding


def test_verify_parses() -> None:
    assert parse_line("/verify bob") == Command("verify", ("bob",))
    assert parse_line("/verify bob ok") == Command("verify", ("bob", "ok"))
    assert parse_line("/verify").name == "error"
    assert parse_line("/verify bob yes").name == "error"


def test_state_lives_under_the_config_dir() -> None:
    assert state_dir_for("http://127.0.0.1:8080", "alice", {"HOME": "/home/a"}) == Path(
        "/home/a/.config/chatd/e2e/127.0.0.1_8080/alice")
    assert state_dir_for("https://chat.example", "bob", {"XDG_CONFIG_HOME": "/x"}) == Path(
        "/x/chatd/e2e/chat.example_80/bob")


def e2e_terminal(server: RunningServer, handle: str, config: Path,
                 passphrase: str = "terminal pass phrase") -> AbstractAsyncContextManager[Terminal]:
    """`chatd chat` with end-to-end encryption on, its state under `config`."""
    return terminal(server, handle, ready=b"end-to-end encryption on", env={
        "CHATD_E2E_PASSPHRASE": passphrase, "XDG_CONFIG_HOME": str(config)})


async def test_two_terminals_talk_encrypted(server: RunningServer, tmp_path: Path) -> None:
    async with e2e_terminal(server, "alice_e", tmp_path) as alice, \
            e2e_terminal(server, "bob_e", tmp_path) as bob:
        await alice.type("/to bob_e\n")
        await alice.expect("now talking in @bob_e 🔒".encode())
        await alice.type("meet at the old mill\n")
        await bob.expect("alice_e: 🔒 meet at the old mill".encode())
        await bob.type("/to alice_e\nbring the map\n")
        await alice.expect("bob_e: 🔒 bring the map".encode())
        await alice.type("/verify bob_e\n")
        await alice.expect(b"if it matches: /verify bob_e ok")
        await bob.type("/verify alice_e\n")
        await bob.expect(b"if it matches: /verify alice_e ok")
        number = alice.output.split(b"safety number with bob_e (not verified):\n")[1][:71]
        assert number in bob.output and number.replace(b" ", b"").replace(b"\n", b"")[
            :-4].isdigit()
        await alice.type("/verify bob_e ok\n")
        await alice.expect(b"bob_e is verified")
        await alice.type("/group plotters bob_e\n")
        await alice.expect("now talking in plotters 🔒".encode())
        await alice.type("the plan, in the group\n")
        await bob.expect("[plotters 🔒] #2 alice_e: 🔒 the plan, in the group".encode())
        await alice.type("/history 5\n")
        await alice.expect("alice_e: 🔒 the plan, in the group".encode())
        secret_file = tmp_path / "map.txt"
        secret_file.write_text("x marks the spot")
        await alice.type(f"/send-file {secret_file}\n")
        await alice.expect("sent map.txt (16 bytes, encrypted 🔒)".encode())
        await bob.expect("alice_e: 🔒 map.txt\n    📎 map.txt (16 bytes, encrypted)".encode())
        await alice.type("/edit 2 a new plan\n")
        await alice.expect(b"edits are not end-to-end encrypted yet")
    # Only ciphertext on the server: no text, no file, no file name in its files.
    for needle in ("meet at the old mill", "the plan, in the group", "x marks the spot",
                   "map.txt"):
        assert files_holding(server, needle) == [], needle
    async with ChatClient(server.url) as observer:
        await observer.login("bob_e", PASSWORD)
        conversations = await observer.conversations()
        assert [c["encrypted"] for c in conversations] == [True, True]
        for conversation in conversations:
            history = await observer.history(conversation["conversation_id"])
            assert {m["content_type"] for m in history["messages"]} <= {
                "application/vnd.chatd.olm", "application/vnd.chatd.megolm", "chatd/system"}
        devices = await observer.request("GET", "/devices")
    # A restarted terminal is the same device, with the same keys: no new device for bob.
    async with e2e_terminal(server, "alice_e", tmp_path) as alice, \
            e2e_terminal(server, "bob_e", tmp_path) as bob:
        await alice.type("/to bob_e\nstill me\n")
        await bob.expect("alice_e: 🔒 still me".encode())
        assert b"security" not in bob.output
    async with ChatClient(server.url) as observer:
        await observer.login("bob_e", PASSWORD)
        after = await observer.request("GET", "/devices")
        assert len(after["devices"]) == len(devices["devices"]) + 1  # observer's login only
