from __future__ import annotations

import dataclasses

import pytest

from chatd.errors import BadRequest, Conflict, Unauthorized
from chatd.storage import records
from tests.helpers import PASSWORD
from tests.services.conftest import Shard


async def test_device_cap_counts_only_live_devices_and_revocation_cleans_up(
        shard: Shard) -> None:
    accounts = shard.services.accounts
    session = await shard.user("capped")
    handle = accounts.get_user(session.user_id).handle
    logins = [await accounts.login(handle=handle, password=PASSWORD, device_name=f"d{n}",
                                   client="t") for n in range(15)]
    with pytest.raises(Conflict) as refused:
        await accounts.login(handle=handle, password=PASSWORD, device_name="17th", client="t")
    assert refused.value.code == "too_many_devices"
    # Revoking a device deletes its token and its cursors, and frees a place.
    gone = accounts.authenticate(logins[0].token)
    await shard.services.committer.submit(
        lambda batch: batch.put(records.CURSORS, (gone.device_id, 42), 7))
    await accounts.revoke_device(session, gone.device_id)
    with pytest.raises(Unauthorized):
        accounts.authenticate(logins[0].token)
    assert shard.services.store.scan(records.CURSORS, records.u64(gone.device_id)) == []
    await accounts.login(handle=handle, password=PASSWORD, device_name="17th", client="t")


async def test_names_are_cleaned_before_they_reach_a_batch(shard: Shard) -> None:
    accounts = shard.services.accounts
    session = await shard.user()
    for name in ("a\u202eb", "\ud800", "a\u200bb"):
        with pytest.raises(BadRequest):
            await accounts.update_profile(session, display_name=name, status_text=None)
    user = accounts.get_user(session.user_id)
    assert dataclasses.replace(user) == shard.services.store.get(records.USERS, user.user_id)
