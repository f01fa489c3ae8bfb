"""Sans-I/O helpers for the SDK's crypto tests: machines on cheap state stores, and the
key exchange the server would relay, done by hand."""

from __future__ import annotations

from pathlib import Path

import nacl.pwhash.argon2id

from chatd.e2e.machine import E2EMachine
from chatd.e2e.store import StateStore
from chatd.e2e.trust import DeviceKeys

#: The cheapest argon2id: tests open many stores; the cost is a setting, not a behaviour.
CHEAP = {"opslimit": nacl.pwhash.argon2id.OPSLIMIT_MIN,
         "memlimit": nacl.pwhash.argon2id.MEMLIMIT_MIN}


def open_store(root: Path, passphrase: str = "pass phrase") -> StateStore:
    return StateStore.open(root, passphrase, **CHEAP)


def machine(tmp: Path, user_id: str, device_id: str) -> E2EMachine:
    return E2EMachine.load(open_store(tmp / f"{user_id}-{device_id}"), user_id, device_id)


def introduce(*machines: E2EMachine) -> None:
    """Every machine learns every other's device keys (what /keys/query gives)."""
    by_user: dict[str, list[DeviceKeys]] = {}
    for m in machines:
        by_user.setdefault(m.user_id, []).append(m.me())
    for m in machines:
        for user_id, devices in by_user.items():
            m.observe_devices(user_id, devices)


def connect(sender: E2EMachine, *receivers: E2EMachine) -> None:
    """`sender` opens Olm sessions to `receivers` with keys they published (a claim)."""
    for receiver in receivers:
        body = receiver.account.prepare_upload()
        receiver.account.mark_published()
        signed = next(iter(body["one_time_keys"].values()))
        sender.start_session(receiver.me(), signed["key"], signed["signature"])
