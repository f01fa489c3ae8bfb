from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


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
    for flag in ("--listen", "--data", "--config"):
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
