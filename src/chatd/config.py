"""Configuration: defaults < TOML file < CHATD_* environment < command-line flags.

Every option lives in a frozen dataclass below, with its default; `conf/chatd.toml`
documents each one. An invalid value raises `ConfigError` whose message names the key,
so the CLI can print one line and exit 2.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class ConfigError(Exception):
    """An invalid setting; the message starts with the dotted key it concerns."""


@dataclass(frozen=True)
class ServerConfig:
    #: HOST:PORT for REST and WebSocket clients; port 0 picks a free port.
    listen: str = "127.0.0.1:8080"
    #: Seconds that in-flight requests get to finish on SIGINT/SIGTERM.
    graceful_timeout: float = 5.0
    #: Largest HTTP request body accepted, in bytes (message bodies have their own limit).
    max_request_bytes: int = 1_048_576
    #: Pending TCP connections the listener queues (hypercorn's default of 100 is too few).
    backlog: int = 2048
    #: Seconds one socket write may stall (a peer that reads nothing) before the
    #: connection is aborted; without it such a peer pins its task and blocks shutdown.
    send_timeout: float = 10.0
    #: Bearer token for operator routes such as /metrics; empty disables them.
    admin_token: str = ""
    #: PEM certificate chain and its private key: with both set, the listener speaks only
    #: TLS (HTTPS and WSS on the same port). SIGHUP rereads them. Empty: plain HTTP.
    certfile: str = ""
    keyfile: str = ""


@dataclass(frozen=True)
class StorageConfig:
    #: Directory of the RocksDB data; CHATD_DATA or --data override it.
    data_dir: str = "./var/chatd"
    #: fsync the write-ahead log before acknowledging a batch. Off risks the last
    #: acknowledged writes on power loss (not on a process crash).
    sync: bool = True
    #: Most commands one group-commit batch takes.
    max_batch: int = 1024
    #: Conversations whose state (head seq, members) an owner keeps in memory.
    conversation_cache: int = 100_000


@dataclass(frozen=True)
class ClusterConfig:
    #: This process's shard name; must be one of `shards`.
    shard: str = "local"
    #: Every shard of the deployment. More than one needs the shard mesh (a later release).
    shards: tuple[str, ...] = ("local",)
    #: This shard's number (0..1023), unique per shard; it is part of every id made here.
    shard_number: int = 0
    #: Points per shard on the consistent-hash ring.
    vnodes: int = 128


@dataclass(frozen=True)
class AuthConfig:
    #: Days a login token stays valid. Open sockets are closed (4001) when it expires;
    #: expired devices and tokens are deleted by a sweep every `prune_interval` seconds.
    token_ttl_days: float = 30.0
    prune_interval: float = 3600.0
    #: Devices (logins) one user may hold at once; past it, login answers 409.
    max_devices: int = 16
    min_password_length: int = 8
    #: argon2id cost. The defaults are libsodium's INTERACTIVE level (~80 ms, 64 MiB).
    #: Lower them only for tests and benchmarks.
    argon2_opslimit: int = 2
    argon2_memlimit_kib: int = 65_536
    #: Password hashes computed at once (each takes argon2_memlimit_kib of memory).
    hash_concurrency: int = 2
    #: Logins and registrations allowed per client address: a burst, then a steady rate.
    attempts_burst: int = 10
    attempts_per_minute: float = 30.0


@dataclass(frozen=True)
class LimitsConfig:
    #: Largest message body, in bytes (after base64 decoding for binary content types).
    max_message_bytes: int = 65_536
    max_group_members: int = 1024
    history_page_default: int = 50
    history_page_max: int = 200


@dataclass(frozen=True)
class WebSocketConfig:
    #: Close a connection that sent no frame for this many seconds (clients send `ping`).
    idle_timeout: float = 75.0
    #: Frames waiting for a socket before it counts as too slow and is closed (code 4008).
    max_queue: int = 1024
    #: Largest frame accepted from a client, in bytes; larger ones get an error frame.
    max_frame_bytes: int = 131_072
    #: Sends and reads from one connection waiting for durability at once; more wait
    #: their turn (the connection is not read meanwhile).
    max_inflight_sends: int = 256
    #: Live connections one user may hold at once (all devices); more are closed (4029).
    max_connections_per_user: int = 32


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)

    def listen_address(self) -> tuple[str, int]:
        return parse_listen(self.server.listen)


_SECTIONS = tuple(f.name for f in dataclasses.fields(Config))


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"server.listen: expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def _section_type(name: str) -> type[Any]:
    hints = typing.get_type_hints(Config)
    section: type[Any] = hints[name]
    return section


def _coerce(key: str, expected: Any, value: Any, *, from_text: bool) -> Any:
    """Check (and, for environment strings, convert) one value against its field type."""
    origin = typing.get_origin(expected)
    if expected is bool:
        if from_text:
            lowered = str(value).lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if expected is int:
        if from_text:
            try:
                return int(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a whole number, got {value!r}") from None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected a whole number, got {value!r}")
    if expected is float:
        if from_text:
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if expected is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if origin is tuple:
        items = value.split(",") if from_text and isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
        return tuple(item.strip() for item in items)
    raise AssertionError(f"unsupported config type for {key}: {expected}")  # pragma: no cover


def _merge(base: Config, layer: Mapping[str, Mapping[str, Any]], *, from_text: bool) -> Config:
    sections: dict[str, Any] = {}
    for section_name, values in layer.items():
        if section_name not in _SECTIONS:
            raise ConfigError(f"{section_name}: unknown section (known: {', '.join(_SECTIONS)})")
        if not isinstance(values, Mapping):
            raise ConfigError(f"{section_name}: expected a table of settings")
        section_type = _section_type(section_name)
        hints = typing.get_type_hints(section_type)
        current = getattr(base, section_name)
        changes = {}
        for key, value in values.items():
            dotted = f"{section_name}.{key}"
            if key not in hints:
                raise ConfigError(f"{dotted}: unknown setting")
            changes[key] = _coerce(dotted, hints[key], value, from_text=from_text)
        sections[section_name] = dataclasses.replace(current, **changes)
    return dataclasses.replace(base, **sections)


def _env_layer(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """CHATD_SECTION_KEY=value, e.g. CHATD_STORAGE_SYNC=false; CHATD_DATA is data_dir."""
    layer: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith("CHATD_"):
            continue
        rest = name[len("CHATD_"):].lower()
        if rest == "data":
            layer.setdefault("storage", {})["data_dir"] = value
            continue
        if rest == "config":
            continue
        section, _, key = rest.partition("_")
        if section not in _SECTIONS or not key:
            raise ConfigError(f"{name}: not a chatd setting (expected CHATD_<SECTION>_<KEY>)")
        layer.setdefault(section, {})[key] = value
    return layer


def validate(config: Config) -> Config:
    parse_listen(config.server.listen)
    positive = {
        "server.max_request_bytes": config.server.max_request_bytes,
        "server.backlog": config.server.backlog,
        "storage.max_batch": config.storage.max_batch,
        "storage.conversation_cache": config.storage.conversation_cache,
        "cluster.vnodes": config.cluster.vnodes,
        "auth.min_password_length": config.auth.min_password_length,
        "auth.argon2_opslimit": config.auth.argon2_opslimit,
        "auth.hash_concurrency": config.auth.hash_concurrency,
        "auth.attempts_burst": config.auth.attempts_burst,
        "auth.max_devices": config.auth.max_devices,
        "limits.max_message_bytes": config.limits.max_message_bytes,
        "limits.max_group_members": config.limits.max_group_members,
        "limits.history_page_default": config.limits.history_page_default,
        "limits.history_page_max": config.limits.history_page_max,
        "websocket.max_queue": config.websocket.max_queue,
        "websocket.max_frame_bytes": config.websocket.max_frame_bytes,
        "websocket.max_inflight_sends": config.websocket.max_inflight_sends,
        "websocket.max_connections_per_user": config.websocket.max_connections_per_user,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key}: must be at least 1, got {value}")
    for key, number in (("auth.token_ttl_days", config.auth.token_ttl_days),
                        ("auth.prune_interval", config.auth.prune_interval),
                        ("auth.attempts_per_minute", config.auth.attempts_per_minute),
                        ("server.graceful_timeout", config.server.graceful_timeout),
                        ("server.send_timeout", config.server.send_timeout),
                        ("websocket.idle_timeout", config.websocket.idle_timeout)):
        if number <= 0:
            raise ConfigError(f"{key}: must be greater than 0, got {number}")
    if config.auth.argon2_memlimit_kib < 8:
        raise ConfigError("auth.argon2_memlimit_kib: must be at least 8 (KiB)")
    if config.limits.history_page_default > config.limits.history_page_max:
        raise ConfigError("limits.history_page_default: must not exceed limits.history_page_max")
    if config.cluster.shard not in config.cluster.shards:
        raise ConfigError(
            f"cluster.shard: {config.cluster.shard!r} is not one of cluster.shards "
            f"{list(config.cluster.shards)}")
    if len(config.cluster.shards) > 1:
        raise ConfigError(
            "cluster.shards: more than one shard needs the shard mesh, which this release "
            "does not include yet; run one shard")
    if not 0 <= config.cluster.shard_number <= 1023:
        raise ConfigError("cluster.shard_number: must be within 0..1023")
    if config.server.max_request_bytes < config.limits.max_message_bytes:
        raise ConfigError("server.max_request_bytes: must be at least limits.max_message_bytes")
    return config


def load(path: str | None = None, *, environ: Mapping[str, str] | None = None,
         overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Config:
    """Build the effective config. `path` may be None (no file); overrides come from flags."""
    config = Config()
    if path is not None:
        try:
            with open(path, "rb") as file:
                document = tomllib.load(file)
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None
        config = _merge(config, document, from_text=False)
    config = _merge(config, _env_layer(os.environ if environ is None else environ),
                    from_text=True)
    if overrides:
        config = _merge(config, overrides, from_text=False)
    return validate(config)


