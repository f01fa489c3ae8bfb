from __future__ import annotations

import pytest

from chatd.config import ConfigError, load


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
    ({"CHATD_CLUSTER_SHARDS": "a,b", "CHATD_CLUSTER_SHARD": "a"}, "cluster.shards"),
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
