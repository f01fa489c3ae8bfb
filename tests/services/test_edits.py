"""Edits as the owner answers them (services/edits.py, OwnerApi.history): a page asked
across the mesh stays within its byte bound once the edited bodies are counted."""

from __future__ import annotations

import httpx

from chatd.protocol import owner as ops
from tests.conftest import ServerFactory
from tests.helpers import new_account


async def test_a_page_for_the_mesh_counts_edited_bodies(start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        direct = await alice.direct_with(bob)
        seqs = [(await alice.send(direct, f"m{n}")).json()["seq"] for n in range(10)]
        for seq in seqs:
            response = await alice.post(f"/messages/{direct}/{seq}/edit",
                                        {"body": "x" * 40_000})
            assert response.status_code == 200, response.text
        history = server.services.owner_api.history
        # Unbounded (a local read): the whole log, every message with its edit.
        whole = history(ops.History(int(direct), int(bob.user_id), 0, -1, 100, 0))
        assert set(seqs) <= {m.seq for m in whole.messages}
        assert all(whole.annotations[seq].body == "x" * 40_000 for seq in seqs)
        # Bounded, oldest first: cut after about 100 KB of bodies, edits included.
        forward = history(ops.History(int(direct), int(bob.user_id), 0, -1, 100, 100_000))
        assert forward.has_more and forward.messages[0].seq == 1
        assert [m.seq for m in forward.messages if m.seq in forward.annotations] == seqs[:2]
        # Newest first: the newest ones are kept.
        backward = history(ops.History(int(direct), int(bob.user_id), -1, -1, 100, 100_000))
        assert backward.has_more and backward.messages[-1].seq == whole.messages[-1].seq
        assert set(backward.annotations) <= set(seqs[-3:])
