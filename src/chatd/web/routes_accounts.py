"""Routes: /register, /login, /logout, /devices, /me, /users."""

from __future__ import annotations

import trio
from quart import request

from chatd.domain.models import Session
from chatd.services.context import Services
from chatd.web import models, render
from chatd.web.api import Access, Api
from chatd.web.client_address import client_address as address_of
from chatd.web.render import NO_CONTENT, Reply


def register(api: Api, services: Services) -> None:
    accounts = services.users

    def client_address() -> str:
        return address_of(request, services.proxies)

    @api.route("POST", "/register", summary="Create an account", access=Access.PUBLIC,
               body=models.Register, status=201, response=models.OwnUser, errors=(409, 429))
    async def register_user(body: models.Register) -> Reply:
        user = await accounts.register(handle=body.handle, password=body.password,
                                       display_name=body.display_name, client=client_address())
        return render.own_user(user), 201

    @api.route("POST", "/login", summary="Log in; each login is a new device",
               access=Access.PUBLIC, body=models.Login, response=models.LoginResult,
               errors=(401, 409, 429))
    async def login(body: models.Login) -> Reply:
        result = await accounts.login(handle=body.handle, password=body.password,
                                      device_name=body.device_name or "",
                                      client=client_address())
        return render.login(result)

    @api.route("POST", "/logout", summary="Revoke this token and its device", status=204)
    async def logout(session: Session) -> Reply:
        await accounts.logout(session)
        return NO_CONTENT

    @api.route("GET", "/devices", summary="List your devices", response=models.Devices)
    async def list_devices(session: Session) -> Reply:
        return render.devices(await accounts.list_devices(session), session.device_id)

    @api.route("DELETE", "/devices/{device_id}", summary="Revoke a device and its token",
               status=204)
    async def revoke_device(session: Session, device_id: int) -> Reply:
        await accounts.revoke_device(session, device_id)
        return NO_CONTENT

    @api.route("GET", "/me", summary="Your profile", response=models.OwnUser)
    async def me(session: Session) -> Reply:
        return render.own_user(await accounts.get_user(session.user_id))

    @api.route("PATCH", "/me", summary="Change your profile, photo and privacy settings",
               body=models.ProfileChange, response=models.OwnUser, errors=(404, 429))
    async def update_me(session: Session, body: models.ProfileChange) -> Reply:
        # A change is told to every contact: as a message to each, rate limited as one.
        services.ratelimits.take("messages", account=session.user_id,
                                 address=client_address())
        media = services.media
        photo = 0 if body.remove_photo else body.photo_media_id
        previous = (await accounts.get_user(session.user_id)).photo_media_id
        changing = photo is not None and photo != previous
        if changing and photo:
            # Counted before the profile names it: a crash in between leaks a count,
            # never leaves the profile naming a deleted media.
            await media.pin_photo(photo, session.user_id)
        try:
            user = await accounts.update_profile(
                session, display_name=body.display_name, status_text=body.status,
                hide_last_seen=body.hide_last_seen, read_receipts=body.read_receipts,
                photo_media_id=photo)
        except BaseException:
            if changing and photo:
                with trio.CancelScope(shield=True):
                    await media.unpin_photo(photo)
            raise
        if changing and previous:
            await media.unpin_photo(previous)
        await services.presence.profile_changed(session, user)
        return render.own_user(user)

    @api.route("GET", "/users/{user_id}", summary="A public profile",
               response=models.PublicUser, errors=(429,))
    async def get_user(session: Session, user_id: int) -> Reply:
        with services.ratelimits.charging_unknown_users(account=session.user_id,
                                                        address=client_address()):
            user = await accounts.get_user(user_id)
        # Status text, photo and last seen as the user's privacy settings allow.
        return render.public_user(*await services.privacy.profile_for(session.user_id, user))

    @api.route("GET", "/users", summary="Find a user by exact handle", query=models.FindUser,
               response=models.PublicUser, errors=(404, 429))
    async def find_user(session: Session, query: models.FindUser) -> Reply:
        # Charged found or not: probing which handles exist is what it limits.
        services.ratelimits.take("handle_lookup", account=session.user_id,
                                 address=client_address())
        return render.public_user(*await services.privacy.profile_for(
            session.user_id, await accounts.find_by_handle(query.handle)))
