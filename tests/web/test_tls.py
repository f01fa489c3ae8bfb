"""TLS of chatd's own: HTTPS and WSS on one port, modern defaults, certificates reloaded.

Certificates come from a throwaway CA (trustme); clients trust only that CA.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import ssl
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx
import pytest
import trio
import trustme
import wsproto
import wsproto.events

from chatd.config import ConfigError
from chatd.server import RunningServer
from tests.conftest import ServerFactory
from tests.helpers import UNLIMITED_SENDS, ServerProcess, new_account


def write_certificate(ca: trustme.CA, directory: Path) -> dict[str, str]:
    """A certificate for 127.0.0.1 signed by `ca`, as the server settings that name it."""
    directory.mkdir(parents=True, exist_ok=True)
    issued = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = directory / "chain.pem", directory / "key.pem"
    certfile.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(keyfile))
    return {"certfile": str(certfile), "keyfile": str(keyfile)}


def trusting(ca: trustme.CA, **versions: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    for name, value in versions.items():
        setattr(context, name, value)
    return context


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_server(start_server: ServerFactory, ca: trustme.CA,
                     tmp_path: Path) -> RunningServer:
    return await start_server(server=write_certificate(ca, tmp_path / "tls"))


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


async def open_tls(url: str, context: ssl.SSLContext) -> trio.SSLStream[trio.SocketStream]:
    host, port = address(url)
    stream = trio.SSLStream(await trio.open_tcp_stream(host, port), context,
                            server_hostname=host)
    try:
        await stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


class Wss:
    """A WebSocket client over TLS, with wsproto as the independent implementation."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.stream = stream
        self.connection = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.events: list[wsproto.events.Event] = []

    @classmethod
    async def connect(cls, url: str, token: str, context: ssl.SSLContext) -> Wss:
        wss = cls(await open_tls(url, context))
        await wss.stream.send_all(wss.connection.send(wsproto.events.Request(
            host="127.0.0.1", target=f"/ws?token={token}", subprotocols=["chatd.json"])))
        accepted = await wss.next_event()
        assert isinstance(accepted, wsproto.events.AcceptConnection), accepted
        assert accepted.subprotocol == "chatd.json"
        return wss

    async def next_event(self) -> wsproto.events.Event:
        with trio.fail_after(5):
            while not self.events:
                data = await self.stream.receive_some(65_536)
                self.connection.receive_data(data or None)
                self.events.extend(self.connection.events())
        return self.events.pop(0)

    async def next_frame(self, kind: str) -> dict[str, Any]:
        while True:
            event = await self.next_event()
            assert isinstance(event, wsproto.events.TextMessage), event
            frame: dict[str, Any] = json.loads(event.data)
            if frame["type"] == kind:
                return frame

    async def send(self, frame: dict[str, Any]) -> None:
        await self.stream.send_all(self.connection.send(
            wsproto.events.Message(data=json.dumps(frame))))

    async def close(self) -> int | None:
        """Our close frame, then the server's answer: its close code."""
        await self.stream.send_all(self.connection.send(wsproto.events.CloseConnection(1000)))
        event = await self.next_event()
        assert isinstance(event, wsproto.events.CloseConnection), event
        await self.stream.aclose()
        return event.code


async def wait_until_offline(server: RunningServer, user_id: str) -> None:
    for _ in range(500):
        if not server.services.hub.is_online(int(user_id)):
            return
        await trio.sleep(0.01)
    raise AssertionError("the session is still open after 5 s")


def replace_file(target: str, source: str) -> None:
    Path(target).write_bytes(Path(source).read_bytes())


def logged(path: Path, text: str) -> bool:
    return text in path.read_text()


# --- HTTPS -------------------------------------------------------------------------------


@pytest.mark.parametrize("http2", [False, True], ids=["http/1.1", "h2"])
async def test_rest_is_served_over_https(tls_server: RunningServer, ca: trustme.CA,
                                         http2: bool) -> None:
    assert tls_server.url.startswith("https://127.0.0.1:")
    async with httpx.AsyncClient(base_url=tls_server.url, verify=trusting(ca), http2=http2,
                                 timeout=10) as http:
        alice = await new_account(http)
        response = await alice.get("/me")
        assert response.status_code == 200 and response.json()["handle"] == alice.handle
        # HTTP/2 is negotiated by ALPN when the client offers it.
        assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")


async def test_only_tls_1_2_and_later_is_spoken(tls_server: RunningServer,
                                                ca: trustme.CA) -> None:
    stream = await open_tls(tls_server.url, trusting(ca))
    async with stream:
        assert stream.version() == "TLSv1.3"
    stream = await open_tls(tls_server.url,
                            trusting(ca, maximum_version=ssl.TLSVersion.TLSv1_2))
    async with stream:
        assert stream.version() == "TLSv1.2"
        cipher, _protocol, _bits = stream.cipher()
        assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher)
    # A client that can speak TLS 1.0 and 1.1 (it can with a server that allows them) is
    # refused.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the old versions' names
        old = trusting(ca, minimum_version=ssl.TLSVersion.TLSv1,
                       maximum_version=ssl.TLSVersion.TLSv1_1)
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises(trio.BrokenResourceError):
        await open_tls(tls_server.url, old)


async def test_plain_http_on_the_tls_port_is_refused_and_serving_goes_on(
        tls_server: RunningServer, ca: trustme.CA) -> None:
    host, port = address(tls_server.url)
    async with await trio.open_tcp_stream(host, port) as plain:
        await plain.send_all(b"GET /healthz HTTP/1.1\r\nHost: chatd\r\n\r\n")
        received = b""
        with trio.fail_after(5):
            while data := await plain.receive_some(65_536):
                received += data
        assert b"HTTP/1.1 200" not in received
    async with httpx.AsyncClient(base_url=tls_server.url, verify=trusting(ca)) as http:
        assert (await http.get("/healthz")).status_code == 200


@pytest.mark.parametrize("tls", [True, False], ids=["h2", "h2c"])
async def test_http2_does_not_invite_websockets_over_it(
        start_server: ServerFactory, ca: trustme.CA, tmp_path: Path, tls: bool) -> None:
    """Browsers open /ws over an HTTP/2 connection that advertises RFC 8441; chatd's
    WebSocket transport is HTTP/1.1, so it must not be advertised."""
    settings = write_certificate(ca, tmp_path / "tls") if tls else {}
    running = await start_server(server=settings)
    if tls:
        context = trusting(ca)
        context.set_alpn_protocols(["h2"])
        stream: trio.abc.Stream = await open_tls(running.url, context)
        assert stream.selected_alpn_protocol() == "h2"
    else:
        stream = await trio.open_tcp_stream(*address(running.url))
    async with stream:
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        await stream.send_all(client.data_to_send())
        changed: dict[int, int] = {}
        with trio.fail_after(5):
            while not changed:
                for event in client.receive_data(await stream.receive_some(65_536)):
                    if isinstance(event, h2.events.RemoteSettingsChanged):
                        changed = {code: setting.new_value
                                   for code, setting in event.changed_settings.items()}
        assert changed.get(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL, 0) == 0
        assert changed[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] > 0  # hypercorn's own


# --- WSS ---------------------------------------------------------------------------------


async def test_the_live_stream_is_served_over_wss(tls_server: RunningServer,
                                                  ca: trustme.CA) -> None:
    async with httpx.AsyncClient(base_url=tls_server.url, verify=trusting(ca)) as http:
        alice, bob = await new_account(http), await new_account(http)
        conversation_id = await alice.direct_with(bob)
        wss = await Wss.connect(tls_server.url, bob.token, trusting(ca))
        assert (await alice.send(conversation_id, "over TLS")).status_code == 201
        delivered = await wss.next_frame("message")
        assert delivered["message"]["body"] == "over TLS"
        await wss.send({"type": "send", "req": "r1", "conversation_id": conversation_id,
                        "client_msg_id": "wss-1", "content_type": "text/plain",
                        "body": "and back"})
        sent = await wss.next_frame("sent")
        assert sent["req"] == "r1" and sent["seq"] == 2
        assert await wss.close() == 1000
        await wait_until_offline(tls_server, bob.user_id)


async def test_a_wss_client_that_vanishes_ends_its_session(tls_server: RunningServer,
                                                           ca: trustme.CA) -> None:
    async with httpx.AsyncClient(base_url=tls_server.url, verify=trusting(ca)) as http:
        bob = await new_account(http)
        wss = await Wss.connect(tls_server.url, bob.token, trusting(ca))
        assert tls_server.services.hub.is_online(int(bob.user_id))
        await trio.aclose_forcefully(wss.stream.transport_stream)  # no close frame, no TLS bye
        await wait_until_offline(tls_server, bob.user_id)
        # And the listener goes on serving.
        assert (await http.get("/healthz")).status_code == 200


async def test_a_wss_client_that_reads_nothing_is_aborted(start_server: ServerFactory,
                                                          ca: trustme.CA,
                                                          tmp_path: Path) -> None:
    """Through the bridge, a stuck TLS client still meets the transport's back-pressure
    and its write deadline: the session ends rather than buffering without bound."""
    # (Up to 12 MB sent in a burst: past message_bytes, and not what this is about.)
    running = await start_server(server={**write_certificate(ca, tmp_path / "tls"),
                                         "send_timeout": 0.5},
                                 websocket={"max_queue": 16}, ratelimits=UNLIMITED_SENDS)
    async with httpx.AsyncClient(base_url=running.url, verify=trusting(ca),
                                 timeout=10) as http:
        alice, bob = await new_account(http), await new_account(http)
        conversation_id = await alice.direct_with(bob)
        host, port = address(running.url)
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect((host, port))
        stream = trio.SSLStream(trio.SocketStream(sock), trusting(ca), server_hostname=host)
        wss = Wss(stream)
        await stream.send_all(wss.connection.send(wsproto.events.Request(
            host=host, target=f"/ws?token={bob.token}", subprotocols=["chatd.json"])))
        assert isinstance(await wss.next_event(), wsproto.events.AcceptConnection)
        body = "x" * 60_000
        with trio.fail_after(30):
            for n in range(200):  # ~12 MB for a client that reads none of it
                response = await alice.send(conversation_id, f"{n} {body}")
                assert response.status_code == 201
                if not running.services.hub.is_online(int(bob.user_id)):
                    break
            await wait_until_offline(running, bob.user_id)
        await trio.aclose_forcefully(stream)


# --- certificates ------------------------------------------------------------------------


async def test_a_reload_serves_the_new_certificate_to_new_connections(
        start_server: ServerFactory, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    old_ca, new_ca = trustme.CA(), trustme.CA()
    settings = write_certificate(old_ca, tmp_path / "tls")
    running = await start_server(server=settings)
    async with httpx.AsyncClient(base_url=running.url, verify=trusting(old_ca)) as before:
        assert (await before.get("/healthz")).status_code == 200
        write_certificate(new_ca, tmp_path / "tls")  # renewed in place
        assert running.reload_certificate()
        async with httpx.AsyncClient(base_url=running.url, verify=trusting(new_ca)) as after:
            assert (await after.get("/healthz")).status_code == 200
        async with httpx.AsyncClient(base_url=running.url, verify=trusting(old_ca)) as stale:
            with pytest.raises(httpx.ConnectError):
                await stale.get("/healthz")
        # A connection made before the reload goes on with the certificate it has.
        assert (await before.get("/healthz")).status_code == 200

        # A renewal gone wrong (a key that is not the certificate's) keeps the current one.
        other = write_certificate(trustme.CA(), tmp_path / "other")
        replace_file(settings["keyfile"], other["keyfile"])
        caplog.set_level(logging.ERROR)
        assert not running.reload_certificate()
        assert "TLS certificate not reloaded" in caplog.text
        async with httpx.AsyncClient(base_url=running.url, verify=trusting(new_ca)) as after:
            assert (await after.get("/healthz")).status_code == 200


async def test_a_certificate_that_cannot_be_loaded_stops_startup(
        start_server: ServerFactory, tmp_path: Path, ca: trustme.CA) -> None:
    settings = write_certificate(ca, tmp_path / "tls")
    with pytest.raises(ConfigError, match=r"^server\.keyfile: TLS needs both"):
        await start_server(server={"certfile": settings["certfile"]})
    with pytest.raises(ConfigError, match=r"^server\.certfile: cannot load"):
        await start_server(server={**settings, "certfile": str(tmp_path / "missing.pem")})


def test_chatd_serve_names_the_setting_of_a_certificate_it_cannot_load(
        tmp_path: Path) -> None:
    import os

    result = subprocess.run(
        [sys.executable, "-m", "chatd", "serve", "--listen", "127.0.0.1:0",
         "--data", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=30,
        env={**os.environ, "CHATD_SERVER_CERTFILE": str(tmp_path / "missing.pem"),
             "CHATD_SERVER_KEYFILE": str(tmp_path / "missing.key")})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "server.certfile" in lines[0], result.stderr


@pytest.mark.slow
async def test_sighup_reloads_the_certificate_of_a_running_server(tmp_path: Path) -> None:
    old_ca, new_ca = trustme.CA(), trustme.CA()
    settings = write_certificate(old_ca, tmp_path / "tls")
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log", {
        "CHATD_SERVER_CERTFILE": settings["certfile"],
        "CHATD_SERVER_KEYFILE": settings["keyfile"]})
    try:
        url = await server.ready()
        assert url.startswith("https://")
        async with httpx.AsyncClient(base_url=url, verify=trusting(old_ca)) as http:
            assert (await http.get("/healthz")).status_code == 200
        write_certificate(new_ca, tmp_path / "tls")
        server.process.send_signal(signal.SIGHUP)
        for _ in range(200):
            if logged(server.log_path, "TLS certificate reloaded"):
                break
            await trio.sleep(0.05)
        else:
            raise AssertionError("no reload logged 10 s after SIGHUP")
        async with httpx.AsyncClient(base_url=url, verify=trusting(new_ca)) as http:
            assert (await http.get("/healthz")).status_code == 200
    finally:
        # SIGHUP did not end it: it still stops cleanly on SIGTERM.
        assert server.terminate() == 0
