from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from chatd.config import load
from tests.helpers import ServerProcess, free_port

CLUSTER_3 = Path(__file__).parent.parent / "conf" / "cluster-3.toml"


def cluster_3_on_free_ports(tmp_path: Path) -> Path:
    """The shipped three-shard file with mesh ports nobody uses: a clustered shard binds
    its mesh port, and the shipped ones may be taken on a shared machine."""
    text = CLUSTER_3.read_text()
    for port in (7101, 7102, 7103):
        text = text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}")
    path = tmp_path / "cluster-3.toml"
    path.write_text(text)
    return path


def chatd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "chatd", *args], capture_output=True, text=True,
                          timeout=30, env={**os.environ, **(env or {})})


def test_help_is_useful() -> None:
    result = chatd("--help")
    assert result.returncode == 0
    assert "serve" in result.stdout
    result = chatd("serve", "--help")
    assert result.returncode == 0
    for flag in ("--listen", "--data", "--config", "--shard"):
        assert flag in result.stdout


def test_no_command_prints_help_and_exits_2() -> None:
    result = chatd()
    assert result.returncode == 2
    assert "serve" in result.stdout


@pytest.mark.parametrize("args, env, key", [
    (["--listen", "nonsense"], {}, "server.listen"),
    (["--listen", "127.0.0.1:99999"], {}, "server.listen"),
    ([], {"CHATD_STORAGE_SYNC": "maybe"}, "storage.sync"),
    ([], {"CHATD_LIMITS_MAX_GROUP_MEMBERS": "0"}, "limits.max_group_members"),
    ([], {"CHATD_NOPE_X": "1"}, "CHATD_NOPE_X"),
])
def test_an_invalid_setting_is_one_clear_line_and_exit_2(
        args: list[str], env: dict[str, str], key: str) -> None:
    result = chatd("serve", *args, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0], result.stderr


def test_config_file_errors_name_the_key(tmp_path: Path) -> None:
    config = tmp_path / "chatd.toml"
    config.write_text('[storage]\nsyncc = true\n')
    result = chatd("serve", "--config", str(config))
    assert result.returncode == 2 and "storage.syncc: unknown setting" in result.stderr
    config.write_text('[storage\n')
    result = chatd("serve", "--config", str(config))
    assert result.returncode == 2 and "invalid TOML" in result.stderr
    result = chatd("serve", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2 and "missing.toml" in result.stderr


def test_the_shipped_config_file_is_valid(tmp_path: Path) -> None:
    from chatd.config import Config, load

    shipped = Path(__file__).parent.parent / "conf" / "chatd.toml"
    assert load(str(shipped), environ={}) == Config()


def test_chatd_bench_is_the_harness() -> None:
    result = chatd("bench", "--help")
    assert result.returncode == 0
    assert "idle" in result.stdout and "sweep" in result.stdout


@pytest.mark.slow
async def test_serve_starts_the_shard_named_by_the_flag_from_a_cluster_file(
        tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "b", tmp_path / "b.log",
                           args=["--config", str(cluster_3_on_free_ports(tmp_path)),
                                 "--shard", "b"])
    try:
        url = await server.ready()
        async with httpx.AsyncClient(base_url=url) as client:
            health = (await client.get("/healthz")).json()
        assert health["shard"] == "b"
        assert f"(shard b, data {tmp_path / 'b'})" in server.log_path.read_text()
    except BaseException:
        server.kill()
        raise
    assert server.terminate() == 0
    # The file's own secret (a placeholder) is never logged.
    assert "change-me" not in server.log_path.read_text()


async def test_a_taken_mesh_port_is_named_in_one_line(tmp_path: Path) -> None:
    cluster_3 = cluster_3_on_free_ports(tmp_path)
    port = load(str(cluster_3), environ={}).cluster.shards[0].mesh.port  # type: ignore[union-attr]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = serve_once(tmp_path / "data", "--config", str(cluster_3), "--shard", "a")
    assert result.returncode == 1
    assert f"chatd: cannot serve on 127.0.0.1:{port} (cluster mesh): Address already in use" \
        in result.stderr, result.stderr


def serve_once(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return chatd("serve", "--listen", "127.0.0.1:0", "--data", str(data), *args)


@pytest.mark.slow
async def test_a_data_directory_refuses_another_shard_or_another_ring(tmp_path: Path) -> None:
    cluster_3 = cluster_3_on_free_ports(tmp_path)
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log",
                           args=["--config", str(cluster_3), "--shard", "b"])
    try:
        await server.ready()
    finally:
        assert server.terminate() == 0

    result = serve_once(tmp_path / "data", "--config", str(cluster_3), "--shard", "c")
    assert result.returncode == 2, result.stderr
    assert ("chatd: invalid setting: cluster.shard: this data directory belongs to shard 'b', "
            "not 'c'") in result.stderr
    assert "Resharding" in result.stderr

    two = tmp_path / "two.toml"
    text = cluster_3.read_text()
    two.write_text(text[:text.index('[[cluster.shards]]\nname = "c"')])
    result = serve_once(tmp_path / "data", "--config", str(two), "--shard", "b")
    assert result.returncode == 2, result.stderr
    assert "chatd: invalid setting: cluster.shards: this data directory was made under " \
           "another ring (shards a, b, c;" in result.stderr
    assert 'docs/deploy.md, section "Resharding"' in result.stderr


@pytest.mark.parametrize("edit, env, key", [
    (('secret = "change-me-this-placeholder-is-public"\n', ""), {}, "cluster.secret: 3 shards"),
    (('secret = "change-me-this-placeholder-is-public"', 'secret = "too-short"'), {},
     "cluster.secret: the cluster secret must be at least 16 bytes"),
    (("", ""), {"CHATD_CLUSTER_SHARD": "d"}, "cluster.shard: 'd' is not one of"),
])
def test_a_bad_cluster_is_one_clear_line_and_exit_2(
        tmp_path: Path, edit: tuple[str, str], env: dict[str, str], key: str) -> None:
    config = tmp_path / "cluster.toml"
    config.write_text(CLUSTER_3.read_text().replace(*edit) if edit[0] else CLUSTER_3.read_text())
    result = chatd("serve", "--config", str(config), env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0], result.stderr
    assert "too-short" not in result.stderr and "change-me" not in result.stderr


def test_serve_shard_flag_overrides_the_environment(tmp_path: Path) -> None:
    result = chatd("serve", "--config", str(CLUSTER_3), "--shard", "nope", "--data",
                   str(tmp_path / "data"), env={"CHATD_CLUSTER_SHARD": "a"})
    assert result.returncode == 2
    assert "cluster.shard: 'nope' is not one of cluster.shards ['a', 'b', 'c']" in result.stderr
