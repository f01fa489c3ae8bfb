"""The online door: a running shard's admin REST routes, over HTTP with the admin token.

The token goes only into the Authorization header: it is never printed, and no error
message built here contains it (httpx's own messages name the URL, not the headers).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import trio

from chatd.admin_cli.door import Refused, partial_path

#: Seconds for one request; a hand-back copies a range first, so rebalance gets minutes.
TIMEOUT = 30.0
REBALANCE_TIMEOUT = 300.0
#: Seconds between polls of an export being made (doubling up to the second figure).
EXPORT_POLL = (0.1, 2.0)


class OnlineDoor:
    online = True

    def __init__(self, http: httpx.AsyncClient, url: str) -> None:
        self._http = http
        self.where = url

    async def _call(self, method: str, path: str, *, body: Any = None,
                    params: dict[str, Any] | None = None,
                    timeout: float = TIMEOUT) -> httpx.Response:  # noqa: ASYNC109  # httpx's own timeout
        try:
            response = await self._http.request(
                method, path, json=body, timeout=timeout,
                params={key: value for key, value in (params or {}).items()
                        if value not in (None, "", 0)})
        except httpx.HTTPError as exc:
            raise Refused("unreachable", f"cannot reach {self.where}: {exc}") from None
        if response.status_code >= 400:
            raise _refusal(response)
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._call(method, path, **kwargs)
        return response.json() if response.content else None

    async def list_users(self, handle: str, after: int, limit: int | None) -> Any:
        return await self._json("GET", "/admin/users", params={
            "handle": handle, "after": after, "limit": limit})

    async def show_user(self, user_id: int) -> Any:
        return await self._json("GET", f"/admin/users/{user_id}")

    async def set_active(self, user_id: int, active: bool) -> Any:
        action = "reactivate" if active else "deactivate"
        return await self._json("POST", f"/admin/users/{user_id}/{action}")

    async def erase(self, user_id: int) -> Any:
        # The route waits up to 20 s for every shard's step before answering "erasing".
        return await self._json("POST", f"/admin/users/{user_id}/erase", timeout=60.0)

    async def export(self, user_id: int, out: Path, timeout: float) -> int:  # noqa: ASYNC109
        started = await self._json("POST", f"/admin/users/{user_id}/export")
        path = f"/admin/exports/{started['export_id']}"
        delay, longest = EXPORT_POLL
        with trio.move_on_after(timeout):
            while True:
                async with self._http.stream("GET", path, timeout=TIMEOUT) as response:
                    if response.status_code == 200:
                        return await _save(response, out)
                    if response.status_code != 202:
                        await response.aread()
                        raise _refusal(response)
                await trio.sleep(delay)
                delay = min(delay * 2, longest)
        raise Refused("export_timeout", f"the export of user {user_id} was not ready after "
                      f"{timeout:g} s; it goes on: fetch it later with GET {path}")

    async def reports(self, status: str, after: int, limit: int | None) -> Any:
        return await self._json("GET", "/admin/reports", params={
            "status": status, "after": after, "limit": limit})

    async def resolve(self, report_id: int, action: str, note: str) -> Any:
        body = {"action": action, **({"note": note} if note else {})}
        return await self._json("POST", f"/admin/reports/{report_id}/resolve", body=body)

    async def abuse_queue(self, after: int, limit: int | None) -> Any:
        return await self._json("GET", "/admin/abuse", params={"after": after, "limit": limit})

    async def set_limited(self, user_id: int, limited: bool, note: str) -> Any:
        action = "limit" if limited else "unlimit"
        return await self._json("POST", f"/admin/users/{user_id}/{action}",
                                body={"note": note} if note else {})

    async def quarantine(self, sha256: str, reason: str) -> None:
        await self._call("POST", "/admin/media/quarantine",
                         body={"sha256": sha256, "reason": reason})

    async def ranges(self) -> Any:
        return await self._json("GET", "/admin/ranges")

    async def promote(self, range_of: str) -> Any:
        return await self._json("POST", "/admin/promote", body={"range": range_of})

    async def rebalance(self) -> Any:
        return await self._json("POST", "/admin/rebalance", timeout=REBALANCE_TIMEOUT)


def client(url: str, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url.rstrip("/"),
                             headers={"Authorization": f"Bearer {token}"})


def _refusal(response: httpx.Response) -> Refused:
    try:
        answer: Any = response.json()
    except ValueError:
        answer = None
    error = answer.get("error") if isinstance(answer, dict) else None
    if isinstance(error, dict):
        code, message = str(error.get("code", "")), str(error.get("message", ""))
        if response.status_code == 404 and code == "not_found":
            # No such route (an unknown user is unknown_user): a shard without
            # server.admin_token declares no admin routes at all.
            message += " (without server.admin_token a shard has no admin routes)"
        return Refused(code, message, status=response.status_code)
    return Refused("unreadable", response.text[:200], status=response.status_code)


async def _save(response: httpx.Response, out: Path) -> int:
    """The body into `out`, through a temporary name beside it: `out` appears only whole,
    readable by its owner only (an export is personal data)."""
    partial = partial_path(out)
    written = 0
    try:
        async with await trio.open_file(partial, "wb") as file:
            async for chunk in response.aiter_bytes():
                await file.write(chunk)
                written += len(chunk)
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return written
