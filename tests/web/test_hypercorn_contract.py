"""The contract between web/hypercorn_adapter.py and hypercorn's internals.

The adapter subclasses hypercorn's per-connection server and protocol classes and restates
a few of their methods (docs/architecture.md, "hypercorn adapter"). These tests fail, and
say where to look, when an installed hypercorn differs from what the adapter was written
against: a version it does not list, a signature or attribute that moved, or a change in
the code of a method it restates or relies on (compared by fingerprint). What to do then:
read hypercorn's change to that method, carry it over to the adapter if it restates it,
run tests/web/test_http_edge.py and tests/web/test_hypercorn_guard.py, and record the new
fingerprint here.

They also hold the adapter to its promises: hypercorn's classes are not patched (others in
the process get hypercorn as shipped), and no other module uses hypercorn's internals.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import io
import textwrap
import tokenize
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import h2.settings
import pytest
from hypercorn.config import Config
from hypercorn.events import Closed, RawData, Updated
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.events import Response
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import H2CProtocolRequiredError, H2ProtocolAssumedError, H11Protocol
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import parse_socket_addr, wrap_app

from chatd.server import RunningServer
from chatd.web import hypercorn_adapter
from chatd.web.hypercorn_adapter import (
    SUPPORTED,
    UnsupportedHypercorn,
    check_hypercorn_version,
    require_supported_hypercorn,
)

SOURCE = Path(__file__).resolve().parents[2] / "src" / "chatd"
INSTALLED = version("hypercorn")
MINOR = tuple(int(part) for part in INSTALLED.split(".")[:2])

#: hypercorn methods the adapter restates (R) or whose behaviour its guards build on (B),
#: fingerprinted per supported minor version (see `fingerprint`).
WATCHED: dict[str, Callable[..., Any]] = {
    "TCPServer.run": TCPServer.run,  # R: _ConnectionServer.run
    "TCPServer.protocol_send": TCPServer.protocol_send,  # R: _ConnectionServer.protocol_send
    "TCPServer._read_data": TCPServer._read_data,  # B: ends with protocol.handle(Closed())
    "TCPServer._close": TCPServer._close,  # B: send_eof, then aclose
    "ProtocolWrapper.__init__": ProtocolWrapper.__init__,  # R: _Protocols.__init__
    "ProtocolWrapper.handle": ProtocolWrapper.handle,  # R: _Protocols.handle
    "H11Protocol.stream_send": H11Protocol.stream_send,  # B: guard 3 adds a header first
    "H11Protocol._maybe_recycle": H11Protocol._maybe_recycle,  # B: guards 2 and 3
    "H2Protocol.__init__": H2Protocol.__init__,  # B: guard 5 rebuilds its settings
    "H2Protocol.handle": H2Protocol.handle,  # R: _H2.handle (its RawData branch)
    "H2Protocol._handle_events": H2Protocol._handle_events,  # B: guard 4
}
FINGERPRINTS: dict[tuple[int, ...], dict[str, str]] = {
    (0, 17): {
        "TCPServer.run": "7acddd6c8021fe9e",
        "TCPServer.protocol_send": "f80b53daf72e6fec",
        "TCPServer._read_data": "d3a7306b1e81a5f0",
        "TCPServer._close": "0a515f5726298083",
        "ProtocolWrapper.__init__": "b7f6bedffce586e4",
        "ProtocolWrapper.handle": "8029a5d8c5e2fb74",
        "H11Protocol.stream_send": "04d16967a6504b80",
        "H11Protocol._maybe_recycle": "15c3d752059c412c",
        "H2Protocol.__init__": "b65ff54c414109b3",
        "H2Protocol.handle": "1df26ed40e073b4b",
        "H2Protocol._handle_events": "9a441159e0488631",
    },
    (0, 18): {
        "TCPServer.run": "a2a0c7a79c10a040",
        "TCPServer.protocol_send": "f80b53daf72e6fec",
        "TCPServer._read_data": "c8ac8e4d8968728f",
        "TCPServer._close": "0a515f5726298083",
        "ProtocolWrapper.__init__": "2ee2d074028ea70e",
        "ProtocolWrapper.handle": "8029a5d8c5e2fb74",
        "H11Protocol.stream_send": "04d16967a6504b80",
        "H11Protocol._maybe_recycle": "15c3d752059c412c",
        "H2Protocol.__init__": "287dc99a59fa3fb6",
        "H2Protocol.handle": "1df26ed40e073b4b",
        "H2Protocol._handle_events": "f0c63dc2099b8426",
    },
}


def fingerprint(function: Callable[..., Any]) -> str:
    """A hash of a function's code that ignores layout and comments (and so differs
    neither between Python versions nor after a reformat)."""
    source = textwrap.dedent(inspect.getsource(function))
    skipped = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
               tokenize.DEDENT, tokenize.ENCODING, tokenize.ENDMARKER}
    tokens = [token.string for token in tokenize.generate_tokens(io.StringIO(source).readline)
              if token.type not in skipped]
    return hashlib.sha256(" ".join(tokens).encode()).hexdigest()[:16]


# --- the version check ----------------------------------------------------------------


def test_the_installed_hypercorn_is_supported() -> None:
    assert MINOR in SUPPORTED, (
        f"hypercorn {INSTALLED} is installed; the adapter supports {SUPPORTED}")
    require_supported_hypercorn()


@pytest.mark.parametrize("found", ["0.16.0", "0.19.0", "1.0.0", "nonsense"])
def test_another_hypercorn_is_refused_with_a_clear_message(found: str) -> None:
    with pytest.raises(UnsupportedHypercorn) as refused:
        check_hypercorn_version(found)
    message = str(refused.value)
    assert found in message and "0.18.x" in message and "pip install" in message


@pytest.mark.parametrize("found", ["0.17.0", "0.17.3", "0.18.0", "0.18.7"])
def test_the_supported_minors_pass(found: str) -> None:
    check_hypercorn_version(found)


# --- the shapes the adapter relies on -------------------------------------------------


def parameters(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_the_constructors_and_helpers_the_adapter_calls_take_what_it_passes() -> None:
    assert parameters(TCPServer.__init__) == ["self", "app", "config", "context", "state",
                                              "stream"]
    protocol_parameters = ["self", "app", "config", "context", "task_group",
                           "connection_state", "ssl", "client", "server", "send"]
    assert parameters(H11Protocol.__init__) == protocol_parameters
    assert parameters(H2Protocol.__init__) == protocol_parameters
    assert parameters(ProtocolWrapper.__init__) == [
        "self", "app", "config", "context", "task_group", "state", "ssl", "client", "server",
        "send", "alpn_protocol"]
    assert parameters(H2Protocol.initiate) == ["self", "headers", "settings"]
    assert parameters(Lifespan.__init__) == ["self", "app", "config", "state"]
    assert parameters(WorkerContext.__init__) == ["self", "max_requests"]
    assert parameters(wrap_app) == ["app", "wsgi_max_body_size", "mode"]
    assert parameters(parse_socket_addr) == ["family", "address"]
    for error in (H2CProtocolRequiredError, H2ProtocolAssumedError):
        assert issubclass(error, Exception)
    response = Response(stream_id=1, status_code=200, headers=[])
    assert (response.stream_id, response.status_code, response.headers) == (1, 200, [])
    assert RawData(data=b"x").data == b"x"
    assert Updated(idle=True).idle
    Closed()


def test_the_attributes_the_adapter_uses_are_there() -> None:
    server = TCPServer(None, Config(), WorkerContext(None), {}, None)  # type: ignore[arg-type]
    for name in ("app", "config", "context", "state", "stream", "send_lock", "idle_task"):
        assert hasattr(server, name), f"TCPServer instances no longer have .{name}"
    for name in ("_read_data", "_close", "_idle_timeout"):
        assert callable(getattr(TCPServer, name, None)), f"TCPServer.{name} is gone"
    for name in ("_flush", "_handle_events"):
        assert callable(getattr(H2Protocol, name, None)), f"H2Protocol.{name} is gone"
    config = Config()
    for name in ("graceful_timeout", "accesslog", "errorlog", "wsgi_max_body_size",
                 "keep_alive_timeout", "read_timeout", "max_app_queue_size"):
        assert hasattr(config, name), f"hypercorn's Config has no {name}"
    assert h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL


def test_the_code_the_adapter_restates_or_builds_on_is_unchanged() -> None:
    known = FINGERPRINTS.get(MINOR)
    assert known is not None, f"no fingerprints recorded for hypercorn {INSTALLED}"
    found = {name: fingerprint(function) for name, function in WATCHED.items()}
    changed = sorted(name for name in WATCHED if found[name] != known.get(name))
    assert not changed, (
        f"hypercorn {INSTALLED} changed {', '.join(changed)}: compare each with what "
        "web/hypercorn_adapter.py restates or assumes (see this module's docstring), then "
        f"record the new fingerprints {({name: found[name] for name in changed})}")


# --- what the adapter promises ----------------------------------------------------------


async def test_hypercorn_is_not_patched_while_a_shard_runs(server: RunningServer) -> None:
    for cls in (TCPServer, ProtocolWrapper, H11Protocol, H2Protocol):
        for name, member in vars(cls).items():
            if inspect.isfunction(member):
                assert member.__module__ == cls.__module__, (
                    f"{cls.__name__}.{name} is replaced by {member.__module__}")
                assert member.__qualname__ == f"{cls.__name__}.{name}"


def test_only_the_adapter_uses_hypercorn_internals() -> None:
    """hypercorn.typing (the ASGI type aliases) is public; everything else of hypercorn
    is reached through web/hypercorn_adapter.py."""
    adapter = Path(hypercorn_adapter.__file__).resolve()
    for path in sorted(SOURCE.rglob("*.py")):
        if path.resolve() == adapter:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name == "hypercorn" or name.startswith("hypercorn."):
                    assert name == "hypercorn.typing", (
                        f"{path.relative_to(SOURCE)} imports {name}: use "
                        "web/hypercorn_adapter.py")
