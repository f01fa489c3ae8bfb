from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from chatd.config import Address, ConfigError, ShardSpec, load


def test_defaults() -> None:
    config = load(environ={})
    assert config.server.listen == "127.0.0.1:8080"
    assert config.storage.data_dir == "./var/chatd"
    assert config.storage.sync is True
    assert config.limits.max_group_members == 1024


def test_layers_override_in_order(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "c.toml"  # type: ignore[operator]
    path.write_text('[server]\nlisten = "0.0.0.0:9000"\n[storage]\nsync = false\n'
                    'data_dir = "/from/file"\n')
    config = load(str(path), environ={"CHATD_DATA": "/from/env", "CHATD_SERVER_LISTEN": "h:1"},
                  overrides={"server": {"listen": "flag:2"}})
    assert config.storage.data_dir == "/from/env"
    assert config.storage.sync is False
    assert config.server.listen == "flag:2"


@pytest.mark.parametrize("environ, message", [
    ({"CHATD_STORAGE_MAX_BATCH": "lots"}, "storage.max_batch: expected a whole number"),
    ({"CHATD_AUTH_TOKEN_TTL_DAYS": "-1"}, "auth.token_ttl_days: must be greater than 0"),
    ({"CHATD_CLUSTER_SHARD": "other"}, "cluster.shard"),
    ({"CHATD_CLUSTER_SHARDS": "a,b", "CHATD_CLUSTER_SHARD": "a"},
     "cluster.shards: list the shards in the config file"),
    ({"CHATD_CLUSTER_VNODES": "0"}, "cluster.vnodes: must be at least 1"),
    ({"CHATD_CLUSTER_REQUEST_TIMEOUT": "0"}, "cluster.request_timeout: must be greater"),
    ({"CHATD_CLUSTER_HEARTBEAT_INTERVAL": "-1"}, "cluster.heartbeat_interval: must be"),
    ({"CHATD_CLUSTER_MISSED_HEARTBEATS": "0"}, "cluster.missed_heartbeats: must be at least"),
    ({"CHATD_CLUSTER_QUEUE_FRAMES": "0"}, "cluster.queue_frames: must be at least 1"),
    ({"CHATD_CLUSTER_MAX_FRAME_BYTES": "0"}, "cluster.max_frame_bytes: must be at least 1"),
    ({"CHATD_LIMITS_HISTORY_PAGE_DEFAULT": "500"}, "limits.history_page_default"),
    ({"CHATD_SERVER_NOPE": "1"}, "server.nope: unknown setting"),
])
def test_invalid_values_name_their_key(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load(environ=environ)


def test_toml_types_are_checked(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "c.toml"  # type: ignore[operator]
    path.write_text('[storage]\nsync = "yes"\n')
    with pytest.raises(ConfigError, match=r"storage\.sync: expected true or false"):
        load(str(path), environ={})
    path.write_text('[limits]\nmax_message_bytes = true\n')
    with pytest.raises(ConfigError, match=r"limits\.max_message_bytes"):
        load(str(path), environ={})
    path.write_text('storage = 3\n')
    with pytest.raises(ConfigError, match="storage: expected a table"):
        load(str(path), environ={})


# -- the cluster ---------------------------------------------------------------------------

SECRET = "s3cret-of-at-least-16-bytes"

THREE = f"""
[cluster]
shard = "a"
secret = "{SECRET}"

[[cluster.shards]]
name = "a"
number = 0
mesh = "127.0.0.1:7101"

[[cluster.shards]]
name = "b"
number = 1
mesh = "127.0.0.1:7102"

[[cluster.shards]]
name = "c"
number = 2
mesh = "[::1]:7103"
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return str(path)


def refusal(tmp_path: Path, text: str, environ: dict[str, str] | None = None,
            **overrides: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as raised:
        load(write(tmp_path, text), environ=environ or {}, overrides=overrides)
    return str(raised.value)


def test_the_default_is_one_shard_named_local_with_no_mesh_and_no_secret() -> None:
    cluster = load(environ={}).cluster
    assert cluster.shard == "local"
    assert cluster.shards == (ShardSpec("local", 0),)
    assert cluster.names == ("local",)
    assert cluster.this_shard == ShardSpec("local", 0, None)
    assert cluster.peers == ()
    assert not cluster.is_clustered
    assert cluster.secret_bytes() == b""
    assert (cluster.vnodes, cluster.max_frame_bytes, cluster.request_timeout,
            cluster.heartbeat_interval, cluster.missed_heartbeats, cluster.queue_frames) == (
        128, 1_048_576, 2.0, 0.5, 4, 10_000)
    assert (cluster.tls_certfile, cluster.tls_keyfile, cluster.tls_cafile) == ("", "", "")
    assert not cluster.mesh_tls


def test_shards_are_tables_and_the_helpers_read_them(tmp_path: Path) -> None:
    cluster = load(write(tmp_path, THREE), environ={}).cluster
    assert cluster.shards == (
        ShardSpec("a", 0, Address("127.0.0.1", 7101)),
        ShardSpec("b", 1, Address("127.0.0.1", 7102)),
        ShardSpec("c", 2, Address("::1", 7103)),
    )
    assert cluster.names == ("a", "b", "c")
    assert cluster.this_shard.name == "a" and cluster.this_shard.number == 0
    assert [peer.name for peer in cluster.peers] == ["b", "c"]
    assert cluster.by_number(2) == cluster.shards[2]
    assert cluster.by_number(3) is None
    assert cluster.is_clustered
    assert cluster.secret_bytes() == SECRET.encode()
    mesh = cluster.shards[2].mesh
    assert mesh is not None and str(mesh) == "[::1]:7103"
    host, port = cluster.shards[0].mesh or ("", 0)
    assert (host, port) == ("127.0.0.1", 7101)


def test_the_shard_flag_picks_this_shard_from_the_list(tmp_path: Path) -> None:
    cluster = load(write(tmp_path, THREE), environ={"CHATD_CLUSTER_SHARD": "b"},
                   overrides={"cluster": {"shard": "c"}}).cluster
    assert cluster.this_shard.number == 2
    assert [peer.name for peer in cluster.peers] == ["a", "b"]


def test_the_shipped_cluster_files_are_valid() -> None:
    shipped = Path(__file__).parent.parent / "conf" / "cluster-3.toml"
    for name, number in (("a", 0), ("b", 1), ("c", 2)):
        cluster = load(str(shipped), environ={}, overrides={"cluster": {"shard": name}}).cluster
        assert cluster.names == ("a", "b", "c")
        assert cluster.this_shard.number == number
        assert cluster.this_shard.mesh == Address("127.0.0.1", 7101 + number)
    two = Path(__file__).parent.parent / "conf" / "cluster-2.toml"
    for name in ("a", "b"):
        cluster = load(str(two), environ={}, overrides={"cluster": {"shard": name}}).cluster
        assert cluster.names == ("a", "b") and cluster.is_clustered


@pytest.mark.parametrize("table, message", [
    ('name = "a"\nnumber = 0\nmesh = "h:1"\nport = 3', "cluster.shards[0] ('a'): unknown "
                                                       "setting 'port'"),
    ('number = 0\nmesh = "h:1"', "cluster.shards[0]: missing 'name'"),
    ('name = "a"\nmesh = "h:1"', "cluster.shards[0] ('a'): missing 'number'"),
    ('name = "a"\nnumber = 0', "cluster.shards[0] ('a'): missing 'mesh'"),
    ('name = 7\nnumber = 0\nmesh = "h:1"', "cluster.shards[0].name: expected a string"),
    ('name = "a"\nnumber = "0"\nmesh = "h:1"',
     "cluster.shards[0] ('a').number: expected a whole number"),
    ('name = "a"\nnumber = true\nmesh = "h:1"',
     "cluster.shards[0] ('a').number: expected a whole number"),
    ('name = "a"\nnumber = 0\nmesh = 7101', "cluster.shards[0] ('a').mesh: expected a string"),
    ('name = "a"\nnumber = 0\nmesh = "7101"', "cluster.shards[0] ('a').mesh: expected HOST:PORT"),
    ('name = "a"\nnumber = 0\nmesh = "h:99999"', "cluster.shards[0] ('a').mesh: expected "
                                                  "HOST:PORT"),
])
def test_a_bad_shard_table_is_named(tmp_path: Path, table: str, message: str) -> None:
    text = f'[cluster]\nshard = "a"\n[[cluster.shards]]\n{table}\n'
    assert message in refusal(tmp_path, text)


@pytest.mark.parametrize("text, message", [
    ('[cluster]\nshards = ["a", "b"]\n', "cluster.shards[0]: expected a table"),
    ('[cluster]\nshards = []\n', "cluster.shards: expected one [[cluster.shards]] table"),
    ('[cluster]\nshards = "a"\n', "cluster.shards: expected one [[cluster.shards]] table"),
    ('[cluster]\nshard_number = 1\n', "cluster.shard_number: unknown setting"),
])
def test_the_old_list_of_names_is_refused(tmp_path: Path, text: str, message: str) -> None:
    assert message in refusal(tmp_path, text)


def cluster_of(*shards: tuple[str, int, str], extra: str = "", shard: str = "a",
               secret: str | None = SECRET) -> str:
    text = f'[cluster]\nshard = "{shard}"\n'
    if secret is not None:
        text += f'secret = "{secret}"\n'
    text += extra
    for name, number, mesh in shards:
        text += f'[[cluster.shards]]\nname = "{name}"\nnumber = {number}\nmesh = "{mesh}"\n'
    return text


@pytest.mark.parametrize("shards, shard, message", [
    ((("a", 0, "h:1"), ("a", 1, "h:2")), "a", "shard name 'a' is listed twice"),
    ((("a", 0, "h:1"), ("", 1, "h:2")), "a", "shard name '' must be 1 to 64 characters"),
    ((("a", 0, "h:1"), ("b,c", 1, "h:2")), "a", "shard name 'b,c' must be"),
    ((("a", 0, "h:1"), ("b", 0, "h:2")), "a", "number 0 is already used by shard 'a'"),
    ((("a", 0, "h:1"), ("b", 1024, "h:2")), "a", "number 1024 is outside 0..1023"),
    ((("a", -1, "h:1"),), "a", "number -1 is outside 0..1023"),
    ((("a", 0, "h:1"), ("b", 1, "h:2")), "z", "cluster.shard: 'z' is not one of "
                                              "cluster.shards ['a', 'b']; set cluster.shard "
                                              "or pass --shard NAME"),
    ((("a", 0, "h:1"), ("b", 1, "h:1")), "a", "mesh h:1 is already used by shard 'a'"),
    ((("a", 0, "h:1"), ("b", 1, "h:0")), "a", "('b'): mesh: every shard of a cluster needs"),
])
def test_the_shard_list_is_checked(tmp_path: Path, shards: tuple[tuple[str, int, str], ...],
                                   shard: str, message: str) -> None:
    assert message in refusal(tmp_path, cluster_of(*shards, shard=shard))


def test_shards_listed_without_naming_this_one_are_refused(tmp_path: Path) -> None:
    text = cluster_of(("a", 0, "h:1"), ("b", 1, "h:2")).replace('shard = "a"\n', "")
    assert "cluster.shard: 'local' is not one of cluster.shards ['a', 'b']" in refusal(
        tmp_path, text)


def test_one_listed_shard_needs_no_secret(tmp_path: Path) -> None:
    cluster = load(write(tmp_path, cluster_of(("a", 5, "h:0"), secret=None)),
                   environ={}).cluster
    assert cluster.this_shard == ShardSpec("a", 5, Address("h", 0))
    assert not cluster.is_clustered and cluster.secret_bytes() == b""


def test_a_cluster_without_a_secret_refuses_to_start_and_says_how_to_set_one(
        tmp_path: Path) -> None:
    message = refusal(tmp_path, cluster_of(("a", 0, "h:1"), ("b", 1, "h:2"), secret=None))
    assert message.startswith("cluster.secret: 2 shards need a secret")
    for way in ("cluster.secret", "secret_file", "CHATD_CLUSTER_SECRET"):
        assert way in message


def test_mesh_tls_comes_on_top_of_the_secret_and_only_complete(tmp_path: Path) -> None:
    tls = 'tls_certfile = "c.pem"\ntls_keyfile = "k.pem"\ntls_cafile = "ca.pem"\n'
    message = refusal(tmp_path, cluster_of(("a", 0, "h:1"), ("b", 1, "h:2"), extra=tls,
                                           secret=None))
    assert message.startswith("cluster.secret: 2 shards need a secret")
    cluster = load(write(tmp_path, cluster_of(("a", 0, "h:1"), ("b", 1, "h:2"), extra=tls)),
                   environ={}).cluster
    assert cluster.mesh_tls
    partial = 'tls_certfile = "c.pem"\ntls_keyfile = "k.pem"\n'
    message = refusal(tmp_path, cluster_of(("a", 0, "h:1"), ("b", 1, "h:2"), extra=partial))
    assert message.startswith("cluster.tls_cafile: mesh TLS needs tls_certfile, tls_keyfile "
                              "and tls_cafile together")


def test_the_secret_comes_from_the_environment(tmp_path: Path) -> None:
    text = cluster_of(("a", 0, "h:1"), ("b", 1, "h:2"), secret=None)
    cluster = load(write(tmp_path, text), environ={"CHATD_CLUSTER_SECRET": "x" * 16}).cluster
    assert cluster.secret_bytes() == b"x" * 16
    # The environment overrides the file, as for every setting.
    cluster = load(write(tmp_path, cluster_of(("a", 0, "h:1"), ("b", 1, "h:2"))),
                   environ={"CHATD_CLUSTER_SECRET": "y" * 20}).cluster
    assert cluster.secret_bytes() == b"y" * 20


def test_the_secret_comes_from_a_file_without_its_trailing_newline(tmp_path: Path) -> None:
    secret_file = tmp_path / "cluster.secret"
    secret_file.write_bytes(b"from-a-file-0123456789\r\n")
    text = cluster_of(("a", 0, "h:1"), ("b", 1, "h:2"), secret=None,
                      extra=f'secret_file = "{secret_file}"\n')
    cluster = load(write(tmp_path, text), environ={}).cluster
    assert cluster.secret_bytes() == b"from-a-file-0123456789"
    cluster = load(write(tmp_path, cluster_of(("a", 0, "h:1"), ("b", 1, "h:2"), secret=None)),
                   environ={"CHATD_CLUSTER_SECRET_FILE": str(secret_file)}).cluster
    assert cluster.secret_bytes() == b"from-a-file-0123456789"


def test_an_unreadable_secret_file_stops_startup(tmp_path: Path) -> None:
    text = cluster_of(("a", 0, "h:1"), ("b", 1, "h:2"), secret=None,
                      extra=f'secret_file = "{tmp_path / "missing"}"\n')
    message = refusal(tmp_path, text)
    assert message.startswith("cluster.secret_file: cannot read ")
    assert "missing" in message


def test_secret_and_secret_file_together_are_refused(tmp_path: Path) -> None:
    secret_file = tmp_path / "cluster.secret"
    secret_file.write_text(SECRET + "-other\n")
    text = cluster_of(("a", 0, "h:1"), ("b", 1, "h:2"), extra=f'secret_file = "{secret_file}"\n')
    message = refusal(tmp_path, text)
    assert message.startswith("cluster.secret: set either secret")
    assert SECRET not in message
    # Also when the two come from different layers: which one wins would be a guess.
    text = cluster_of(("a", 0, "h:1"), ("b", 1, "h:2"), secret=None,
                      extra=f'secret_file = "{secret_file}"\n')
    assert "set either secret" in refusal(tmp_path, text, {"CHATD_CLUSTER_SECRET": SECRET})


@pytest.mark.parametrize("shards", [1, 2])
def test_a_short_secret_is_refused(tmp_path: Path, shards: int) -> None:
    listed = [("a", 0, "h:1"), ("b", 1, "h:2")][:shards]
    message = refusal(tmp_path, cluster_of(*listed, secret="fifteen-bytes!!"))
    assert message == "cluster.secret: the cluster secret must be at least 16 bytes, got 15"
    secret_file = tmp_path / "short"
    secret_file.write_text("short\n")
    message = refusal(tmp_path, cluster_of(*listed, secret=None,
                                           extra=f'secret_file = "{secret_file}"\n'))
    assert message == "cluster.secret_file: the cluster secret must be at least 16 bytes, got 5"


def test_the_secret_is_never_shown(tmp_path: Path) -> None:
    config = load(write(tmp_path, THREE), environ={})
    assert SECRET not in repr(config)
    assert SECRET not in str(config.cluster)
    assert SECRET not in repr(dataclasses.replace(config.server, admin_token=SECRET))
    # Nor quoted by a type error: a secret written as a number is still a secret.
    message = refusal(tmp_path, THREE.replace(f'"{SECRET}"', "12345678901234567890"))
    assert message.startswith("cluster.secret: expected a string")
    assert "12345678901234567890" not in message
    message = refusal(tmp_path, '[server]\nadmin_token = 98765432109876\n')
    assert "98765432109876" not in message


def test_the_compose_file_runs_each_shard_of_its_config_with_its_own_volume() -> None:
    yaml = pytest.importorskip("yaml")
    root = Path(__file__).parent.parent
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())
    dockerfile = (root / "Dockerfile").read_text()
    assert "WORKDIR /app" in dockerfile and "COPY conf ./conf" in dockerfile
    services = compose["services"]
    assert set(services) == {"shard-a", "shard-b", "shard-c"}
    volumes, ports = set(), set()
    for service_name, service in services.items():
        command = service["command"]
        assert command[:2] == ["serve", "--config"]
        config_path = root / command[2].removeprefix("/app/")
        shard = command[command.index("--shard") + 1]
        cluster = load(str(config_path), environ={"CHATD_CLUSTER_SECRET": SECRET},
                       overrides={"cluster": {"shard": shard}}).cluster
        assert cluster.names == ("a", "b", "c")
        mesh = cluster.this_shard.mesh
        assert mesh is not None and mesh.host == service_name
        assert service["expose"] == [str(mesh.port)]
        assert "CHATD_CLUSTER_SECRET" in service["environment"]
        volumes.update(service["volumes"])
        ports.update(service["ports"])
    assert len(volumes) == len(ports) == 3
    assert set(compose["volumes"]) == {volume.split(":")[0] for volume in volumes}
    # Without the secret the shards refuse to start (compose refuses even earlier).
    with pytest.raises(ConfigError, match=r"cluster\.secret: 3 shards"):
        load(str(root / "conf" / "cluster-3-docker.toml"), environ={},
             overrides={"cluster": {"shard": "a"}})


# -- [ratelimits], trusted proxies and caps ----------------------------------------------------

def test_every_bucket_has_rules_per_account_and_address_that_parse() -> None:
    from chatd.services.ratelimits import BUCKETS

    rules = load(environ={}).ratelimits.rules()
    assert set(rules) == set(BUCKETS)
    for bucket, (per_account, per_address) in rules.items():
        assert per_address is not None, bucket
        # (No account yet, or none at all: registration, the signed email links, sealed
        # sends.)
        assert (per_account is None) == (bucket in ("register", "email_links",
                                                    "sealed_send")), bucket


def test_rate_rules_come_from_the_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[ratelimits]\nmessages_per_account = "30/1s burst 90"\n'
                    'reports_per_address = "off"\n[server]\n'
                    'trusted_proxies = ["10.0.0.0/8", "::1"]\n')
    config = load(str(path), environ={"CHATD_RATELIMITS_GROUP_ADD_PER_ACCOUNT": "200/1m",
                                      "CHATD_SERVER_TRUSTED_PROXIES": "192.0.2.1, 10.0.0.0/8"})
    rules = config.ratelimits.rules()
    messages, _ = rules["messages"]
    assert messages is not None and (messages.per_second, messages.burst) == (30, 90)
    assert rules["reports"][1] is None
    group_add, _ = rules["group_add"]
    assert group_add is not None and (group_add.amount, group_add.period) == (200, 60)
    assert config.server.trusted_proxies == ("192.0.2.1", "10.0.0.0/8")


@pytest.mark.parametrize("environ, message", [
    ({"CHATD_RATELIMITS_MESSAGES_PER_ACCOUNT": "lots"},
     'ratelimits.messages_per_account: expected "AMOUNT/PERIOD"'),
    ({"CHATD_RATELIMITS_LOGIN_PER_ADDRESS": "10/1s burst 0"},
     "ratelimits.login_per_address: the burst must be at least 1"),
    ({"CHATD_RATELIMITS_MEDIA_BYTES_PER_ACCOUNT": "1GiB/0h"},
     "ratelimits.media_bytes_per_account: the amount and the period"),
    ({"CHATD_RATELIMITS_REGISTER_PER_ACCOUNT": "1/1s"},
     "ratelimits.register_per_account: unknown setting"),
    ({"CHATD_SERVER_TRUSTED_PROXIES": "10.0.0.0/8,proxy.example"},
     "server.trusted_proxies: 'proxy.example' is not an IP address or a CIDR block"),
    ({"CHATD_LIMITS_MAX_GROUPS_PER_USER": "0"}, "limits.max_groups_per_user: must be at least 1"),
    ({"CHATD_STORAGE_CONVERSATION_CACHE_BYTES": "0"},
     "storage.conversation_cache_bytes: must be at least 1"),
    ({"CHATD_AUTH_ATTEMPTS_BURST": "10"},
     "auth.attempts_burst: no longer a setting; replaced by ratelimits.login_per_address"),
])
def test_bad_limits_name_their_key(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(environ=environ)
    assert message in str(caught.value)


def test_the_retired_attempts_settings_say_what_replaced_them(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[auth]\nattempts_per_minute = 30.0\n")
    with pytest.raises(ConfigError, match=r"auth\.attempts_per_minute: no longer a setting"):
        load(str(path), environ={})


def test_unlimited_turns_every_bucket_off() -> None:
    from chatd.config import RateLimitsConfig

    assert all(rules == (None, None) for rules in RateLimitsConfig.unlimited().rules().values())
    config = load(environ=RateLimitsConfig.unlimited_env())
    assert config.ratelimits == RateLimitsConfig.unlimited()
