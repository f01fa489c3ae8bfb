"""Routes: /register, /login, /logout, /devices, /me, /users."""

from __future__ import annotations

from typing import Any

from quart import request
from quart_trio import QuartTrio

from chatd.errors import BadRequest
from chatd.services.context import Services
from chatd.web import params, render
from chatd.web.auth import authenticate

Reply = tuple[Any, int] | dict[str, Any] | list[Any]


def register(app: QuartTrio, services: Services) -> None:
    accounts = services.accounts

    def client_address() -> str:
        return request.remote_addr or "unknown"

    @app.post("/register")
    async def register_user() -> Reply:
        body = await params.json_object(request)
        user = await accounts.register(
            handle=params.text(body, "handle"),
            password=params.text(body, "password"),
            display_name=params.text(body, "display_name"),
            client=client_address(),
        )
        return render.own_user(user), 201

    @app.post("/login")
    async def login() -> Reply:
        body = await params.json_object(request)
        result = await accounts.login(
            handle=params.text(body, "handle"),
            password=params.text(body, "password"),
            device_name=params.optional_text(body, "device_name") or "",
            client=client_address(),
        )
        return {"token": result.token, "user_id": str(result.user.user_id),
                "device_id": str(result.device.device_id), "expires_at": result.expires_at}

    @app.post("/logout")
    async def logout() -> Reply:
        session = authenticate(request, accounts)
        await accounts.logout(session)
        return "", 204

    @app.get("/devices")
    async def list_devices() -> Reply:
        session = authenticate(request, accounts)
        return {"devices": [render.device(device, session.device_id)
                            for device in accounts.list_devices(session)]}

    @app.delete("/devices/<device_id>")
    async def revoke_device(device_id: str) -> Reply:
        session = authenticate(request, accounts)
        await accounts.revoke_device(session, params.path_id(device_id, "device_id"))
        return "", 204

    @app.get("/me")
    async def me() -> Reply:
        session = authenticate(request, accounts)
        return render.own_user(accounts.get_user(session.user_id))

    @app.patch("/me")
    async def update_me() -> Reply:
        session = authenticate(request, accounts)
        body = await params.json_object(request)
        display_name = params.optional_text(body, "display_name")
        status = params.optional_text(body, "status")
        hide_last_seen = params.optional_bool(body, "hide_last_seen")
        read_receipts = params.optional_bool(body, "read_receipts")
        unknown = set(body) - {"display_name", "status", "hide_last_seen", "read_receipts"}
        if unknown:
            raise BadRequest(f"{sorted(unknown)[0]}: not a profile field "
                             "(display_name, status, hide_last_seen, read_receipts)",
                             code="invalid_field")
        user = await accounts.update_profile(session, display_name=display_name,
                                             status_text=status, hide_last_seen=hide_last_seen,
                                             read_receipts=read_receipts)
        return render.own_user(user)

    @app.get("/users/<user_id>")
    async def get_user(user_id: str) -> Reply:
        authenticate(request, accounts)
        return render.public_user(accounts.get_user(params.path_id(user_id, "user_id")))

    @app.get("/users")
    async def find_user() -> Reply:
        authenticate(request, accounts)
        handle = request.args.get("handle")
        if not handle:
            raise BadRequest("handle: give ?handle= to look a user up", code="missing_field")
        return render.public_user(accounts.find_by_handle(handle))
