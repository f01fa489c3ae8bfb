from __future__ import annotations

import time

import httpx

from chatd.server import RunningServer
from chatd.web.webapp import ENDPOINTS as WEB_CLIENT
from tests.conftest import ServerFactory
from tests.helpers import assert_error, new_account

PUBLIC_ROUTES = {("GET", "/healthz"), ("GET", "/openapi.json"), ("POST", "/register"),
                 ("POST", "/login")}
#: The links of notification mails: the signed token is the credential (no login).
PUBLIC_ROUTES |= {("GET", "/email/verify"), ("GET", "/email/unsubscribe"),
                  ("POST", "/email/unsubscribe")}
#: Sealed sender: the server's signing keys are what clients check certificates with, and
#: a sealed send carries the recipient's access key instead of a login.
PUBLIC_ROUTES |= {("GET", "/certificate/server_keys"), ("POST", "/sealed/send")}


def app_routes(server: RunningServer) -> set[tuple[str, str]]:
    """Every (method, path) the running app serves, in OpenAPI path syntax."""
    from chatd.web.app import create_app

    app = create_app(server.services)
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.websocket or rule.endpoint in WEB_CLIENT:
            continue  # the web client's files are no API route (tests/web/test_webapp.py)
        path = rule.rule.replace("<", "{").replace(">", "}")
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                routes.add((method, path))
    return routes


async def test_healthz(http: httpx.AsyncClient) -> None:
    response = await http.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_openapi_describes_exactly_the_served_routes(
        server: RunningServer, http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    described = {(method.upper(), path) for path, item in spec["paths"].items()
                 for method in item}
    assert described == app_routes(server)
    for (method, path) in described:
        operation = spec["paths"][path][method.lower()]
        is_public = operation.get("security") == []
        assert is_public == ((method, path) in PUBLIC_ROUTES), (method, path)


async def test_every_private_route_needs_a_token(server: RunningServer,
                                                 http: httpx.AsyncClient) -> None:
    for method, path in sorted(app_routes(server) - PUBLIC_ROUTES):
        url = path.replace("{conversation_id}", "1").replace("{user_id}", "1") \
            .replace("{device_id}", "1").replace("{seq}", "1").replace("{media_id}", "1")
        response = await http.request(method, url, json={})
        expected = 404 if path == "/metrics" else 401  # metrics are off without a token
        assert response.status_code == expected, (method, path, response.text)
        assert "error" in response.json()


async def test_metrics_need_the_admin_token(start_server: ServerFactory) -> None:
    running = await start_server(server={"admin_token": "s3cret-admin"})
    async with httpx.AsyncClient(base_url=running.url) as http:
        account = await new_account(http)
        assert_error(await account.get("/metrics"), 401)
        response = await http.get("/metrics", headers={"Authorization": "Bearer s3cret-admin"})
        assert response.status_code == 200
        assert "chatd_commit_batches_total" in response.text


class ShiftedClock:
    def __init__(self) -> None:
        self.offset_ms = 0

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms


async def test_expired_tokens_are_refused(start_server: ServerFactory) -> None:
    clock = ShiftedClock()
    running = await start_server(clock=clock, auth={"token_ttl_days": 1.0})
    async with httpx.AsyncClient(base_url=running.url) as http:
        account = await new_account(http)
        assert (await account.get("/me")).status_code == 200
        clock.offset_ms = 86_400_000 + 1000
        assert_error(await account.get("/me"), 401, "token_expired")
        fresh = await new_account(http)
        assert (await fresh.get("/me")).status_code == 200


async def test_login_attempts_are_rate_limited(start_server: ServerFactory) -> None:
    running = await start_server(ratelimits={"login_per_address": "3/1h",
                                             "login_per_account": "off"})
    async with httpx.AsyncClient(base_url=running.url) as http:
        statuses = []
        for _ in range(5):
            response = await http.post("/login", json={"handle": "nobody", "password": "x" * 8})
            statuses.append(response.status_code)
        assert statuses == [401, 401, 401, 429, 429]
        assert int(response.headers["Retry-After"]) >= 1
        assert_error(response, 429, "rate_limited")
