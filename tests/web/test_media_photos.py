"""Profile and group photos: PATCH /me and PATCH /groups/{id} with an uploaded image."""

from __future__ import annotations

import httpx
import trio

from chatd.client import ChatClient
from chatd.server import RunningServer
from chatd.storage import records
from tests.helpers import PASSWORD, Account, assert_error, fresh_handle, new_account
from tests.media_files import jpeg_with_exif, pdf, png
from tests.web.test_ws import direct


async def upload(account: Account, data: bytes, content_type: str) -> str:
    response = await account.http.post("/media/upload", content=data, headers={
        **account.headers, "Content-Type": content_type})
    assert response.status_code == 201, response.text
    media_id: str = response.json()["media_id"]
    return media_id


async def test_profile_photos(server: RunningServer, http: httpx.AsyncClient) -> None:
    alice, bob = await new_account(http), await new_account(http)
    photo = await upload(alice, png(), "image/png")
    response = await alice.patch("/me", {"photo_media_id": photo})
    assert response.status_code == 200, response.text
    assert response.json()["photo_media_id"] == photo
    # Others see it in the profile and in lookups, and may fetch it.
    profile = (await bob.get(f"/users/{alice.user_id}")).json()
    assert profile["photo_media_id"] == photo
    found = (await bob.get("/users", params={"handle": alice.handle})).json()
    assert found["photo_media_id"] == photo
    thumb = await bob.http.get(f"/media/{photo}/thumbnail?size=96", headers=bob.headers)
    assert thumb.status_code == 200
    # Without a photo the field is left out.
    assert "photo_media_id" not in (await alice.get(f"/users/{bob.user_id}")).json()
    # A new photo replaces the old, which is no longer counted as one.
    newer = await upload(alice, jpeg_with_exif(), "image/jpeg")
    assert (await alice.patch("/me", {"photo_media_id": newer})).status_code == 200
    store = server.services.store
    assert store.get(records.MEDIA, int(photo)).photo_refs == 0
    assert store.get(records.MEDIA, int(newer)).photo_refs == 1
    # Setting the same photo again does not count it twice.
    assert (await alice.patch("/me", {"photo_media_id": newer})).status_code == 200
    assert store.get(records.MEDIA, int(newer)).photo_refs == 1
    # Deleting the upload keeps the photo (the profile still shows it).
    assert (await alice.delete(f"/media/{newer}")).status_code == 204
    assert (await bob.http.get(f"/media/{newer}", headers=bob.headers)).status_code == 200
    removed = await alice.patch("/me", {"remove_photo": True})
    assert "photo_media_id" not in removed.json()
    assert store.get(records.MEDIA, int(newer)) is None  # nothing holds it any more
    # Only images one may access.
    document = await upload(alice, pdf(), "application/pdf")
    assert_error(await alice.patch("/me", {"photo_media_id": document}), 400, "not_an_image")
    bobs = await upload(bob, png(), "image/png")
    assert_error(await alice.patch("/me", {"photo_media_id": bobs}), 404, "unknown_media")


async def test_a_profile_event_carries_the_photo(server: RunningServer) -> None:
    async with ChatClient(server.url) as alice, ChatClient(server.url) as bob:
        for client in (alice, bob):
            handle = fresh_handle()
            await client.register(handle, PASSWORD, handle)
            await client.login(handle, PASSWORD)
        assert alice.credentials is not None and bob.credentials is not None
        await direct(alice, bob)  # contacts: profile events flow (docs/privacy.md)
        media = await alice.upload(png(), "image/png")
        async with bob.connect() as live:
            await alice.request("PATCH", "/me", {"photo_media_id": media["media_id"]})
            with trio.fail_after(5):
                while (event := await live.next_event())["type"] != "profile":
                    pass
        assert event["user"]["user_id"] == alice.credentials.user_id
        assert event["user"]["photo_media_id"] == media["media_id"]


async def test_group_photos(http: httpx.AsyncClient) -> None:
    alice, bob = await new_account(http), await new_account(http)
    group = await alice.group("team", bob)
    photo = await upload(alice, png(), "image/png")
    changed = await alice.patch(f"/groups/{group}", {"photo_media_id": photo})
    assert changed.status_code == 200, changed.text
    assert changed.json()["photo_media_id"] == photo and changed.json()["name"] == "team"
    view = (await bob.get(f"/conversations/{group}")).json()
    assert view["photo_media_id"] == photo
    listed = (await bob.get("/conversations")).json()["conversations"]
    assert listed[0]["photo_media_id"] == photo
    assert (await bob.http.get(f"/media/{photo}", headers=bob.headers)).status_code == 200
    entries = (await bob.get(f"/messages/{group}")).json()["messages"]
    assert entries[-1]["body"] == {"event": "photo_changed", "actor_id": alice.user_id,
                                   "media_id": photo}
    # Admins only; both together; removal.
    bobs = await upload(bob, png(), "image/png")
    assert_error(await bob.patch(f"/groups/{group}", {"photo_media_id": bobs}), 403)
    both = await alice.patch(f"/groups/{group}", {"name": "crew", "remove_photo": True})
    assert both.json()["name"] == "crew" and "photo_media_id" not in both.json()
    unchanged = await bob.patch(f"/groups/{group}", {})
    assert unchanged.status_code == 200 and unchanged.json()["name"] == "crew"
