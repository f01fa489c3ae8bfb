"""tests/system_packages.py with a stand-in apt-get: a script that logs how it was called
and "installs" by creating the binary, so no test here touches the real system."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.system_packages import SystemPackageError, ensure_binary, privileged

ROOT = Path(__file__).resolve().parent.parent

FAKE_APT_GET = """#!/bin/sh
# Modes, by marker file: no-lists (install fails until update), broken (install fails),
# empty (install succeeds but provides nothing).
echo "$*" >> {log}
case "$1" in
  install)
    if [ -e {dir}/no-lists ]; then echo "E: Unable to locate package $5"; exit 100; fi
    if [ -e {dir}/broken ]; then echo "E: dpkg was interrupted"; exit 100; fi
    sleep 0.3
    if [ ! -e {dir}/empty ]; then printf '#!/bin/sh\\n' > {bin}; chmod +x {bin}; fi
    echo "Setting up $5" ;;
  update) rm -f {dir}/no-lists; echo "Reading package lists... Done" ;;
esac
"""


class FakeApt:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.bin_dir = directory / "bin"
        self.bin_dir.mkdir()
        self.log = directory / "apt.log"
        self.script = directory / "apt-get"
        self.script.write_text(FAKE_APT_GET.format(
            log=self.log, dir=directory, bin=self.bin_dir / "toolx"))
        self.script.chmod(0o755)
        self.lock = directory / "lock"

    def mode(self, name: str) -> None:
        (self.directory / name).touch()

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def ensure(self) -> str:
        return ensure_binary("toolx", "toolx-pkg", apt_get=[str(self.script)],
                             search_path=str(self.bin_dir), lock_path=self.lock)


@pytest.fixture
def apt(tmp_path: Path) -> FakeApt:
    return FakeApt(tmp_path)


def test_a_binary_on_the_path_needs_no_install(apt: FakeApt) -> None:
    (apt.bin_dir / "toolx").write_text("#!/bin/sh\n")
    (apt.bin_dir / "toolx").chmod(0o755)
    assert apt.ensure() == str(apt.bin_dir / "toolx")
    assert apt.calls() == []


def test_a_missing_binary_is_installed_once(apt: FakeApt) -> None:
    assert apt.ensure() == str(apt.bin_dir / "toolx")
    assert apt.ensure() == str(apt.bin_dir / "toolx")
    assert apt.calls() == ["install -y --no-install-recommends toolx-pkg"]


def test_without_package_lists_it_updates_and_tries_again(apt: FakeApt) -> None:
    apt.mode("no-lists")
    assert apt.ensure() == str(apt.bin_dir / "toolx")
    assert apt.calls() == ["install -y --no-install-recommends toolx-pkg", "update",
                           "install -y --no-install-recommends toolx-pkg"]


def test_a_failed_install_says_what_apt_said(apt: FakeApt) -> None:
    apt.mode("broken")
    with pytest.raises(SystemPackageError, match="toolx-pkg") as failed:
        apt.ensure()
    assert "dpkg was interrupted" in str(failed.value)
    assert "exit status 100" in str(failed.value)
    assert apt.calls() == ["install -y --no-install-recommends toolx-pkg"]  # no update


def test_a_package_without_the_binary_is_named(apt: FakeApt) -> None:
    apt.mode("empty")
    with pytest.raises(SystemPackageError, match="the package that provides it"):
        apt.ensure()


def test_an_apt_get_that_cannot_run_is_a_clear_failure(apt: FakeApt) -> None:
    with pytest.raises(SystemPackageError, match="could not run"):
        ensure_binary("toolx", "toolx-pkg", apt_get=[str(apt.directory / "missing")],
                      search_path=str(apt.bin_dir), lock_path=apt.lock)


def test_concurrent_callers_install_once(apt: FakeApt) -> None:
    program = (
        "from pathlib import Path; from tests.system_packages import ensure_binary; "
        f"print(ensure_binary('toolx', 'toolx-pkg', apt_get=[{str(apt.script)!r}], "
        f"search_path={str(apt.bin_dir)!r}, lock_path=Path({str(apt.lock)!r})))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    callers = [subprocess.Popen([sys.executable, "-c", program], env=env,
                                stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [caller.communicate(timeout=60)[0].strip() for caller in callers]
    assert [caller.returncode for caller in callers] == [0, 0, 0]
    assert outputs == [str(apt.bin_dir / "toolx")] * 3
    assert apt.calls() == ["install -y --no-install-recommends toolx-pkg"]


def test_apt_get_runs_as_root_or_through_sudo_without_a_prompt() -> None:
    assert privileged(["apt-get", "update"], 0) == ["apt-get", "update"]
    assert privileged(["apt-get", "update"], 1000) == ["sudo", "-n", "apt-get", "update"]
