"""System binaries the tests need, installed from Debian's archive when missing.

The project's rule: the test command installs what the system package manager must
provide when it is missing, so a clean machine needs nothing but the README's one line.
`ensure_binary("etcd", "etcd-server")` returns the binary's path, installing the package
first if no binary of that name is found.

- apt-get runs as root, or through `sudo -n` (never a password prompt: a test run must
  not hang on one) when the tests are not root.
- `apt-get update` runs only when the install failed for lack of package lists (a fresh
  container ships none): it is slow and touches the network, so not on every install.
- pytest may run in several processes at once (xdist, or two engineers' runs on one box):
  apt's own lock makes a second apt-get fail rather than wait, so callers are serialised
  with a lock file, and the one that waited looks again before installing.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

#: Where root's binaries live: a non-root PATH often lacks the sbin directories.
SYSTEM_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")

#: apt-get says one of these when it has no (or stale) package lists: then, and only
#: then, `apt-get update` is worth running before a second try.
_NEEDS_UPDATE = ("Unable to locate package", "has no installation candidate",
                 "Unable to fetch some archives", "404  Not Found")

#: Long enough for a slow mirror; a hung apt-get must still end the wait with an error.
INSTALL_TIMEOUT = 600.0


class SystemPackageError(RuntimeError):
    """A binary the tests need is missing and its package could not be installed."""


def default_lock_path() -> Path:
    return Path(tempfile.gettempdir()) / "chatd-system-packages.lock"


def find_binary(binary: str, search_path: str | None = None) -> str | None:
    """The binary's path on `search_path` (default: $PATH, then the system dirs)."""
    if search_path is None:
        search_path = os.pathsep.join([os.environ.get("PATH", ""), *SYSTEM_DIRS])
    return shutil.which(binary, path=search_path)


def privileged(command: Sequence[str], euid: int) -> list[str]:
    """`command` as root: as is when we are root, else through non-interactive sudo."""
    return list(command) if euid == 0 else ["sudo", "-n", *command]


def ensure_binary(binary: str, package: str, *, apt_get: str = "apt-get",
                  search_path: str | None = None, lock_path: Path | None = None) -> str:
    """The path of `binary`, installing Debian's `package` first if it is missing.

    `apt_get`, `search_path` and `lock_path` exist for the tests of this function.
    Raises `SystemPackageError` with apt-get's own words when the install fails.
    """
    found = find_binary(binary, search_path)
    if found is not None:
        return found
    lock_path = lock_path or default_lock_path()
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        # Whoever held the lock before us may have installed it.
        found = find_binary(binary, search_path)
        if found is None:
            _install(package, apt_get)
            found = find_binary(binary, search_path)
    if found is None:
        raise SystemPackageError(
            f"installed the Debian package {package!r}, but there is still no {binary!r} "
            f"on the search path: is {package!r} the package that provides it?")
    return found


def _install(package: str, apt_get: str) -> None:
    install = [apt_get, "install", "-y", "--no-install-recommends", package]
    result = _run_as_root(install)
    if result.returncode != 0 and any(sign in result.stdout for sign in _NEEDS_UPDATE):
        update = _run_as_root([apt_get, "update"])
        if update.returncode != 0:
            raise _failure(package, "apt-get update", update)
        result = _run_as_root(install)
    if result.returncode != 0:
        raise _failure(package, "apt-get install", result)


def _run_as_root(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    full = privileged(command, os.geteuid())
    if full[0] == "sudo" and shutil.which("sudo") is None:
        raise SystemPackageError(
            f"`{' '.join(command)}` needs root: run the tests as root, install sudo with "
            "passwordless rights for apt-get, or install the package by hand")
    # Noninteractive: a package's debconf question must not wait for a terminal.
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        return subprocess.run(full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env, timeout=INSTALL_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SystemPackageError(f"could not run `{' '.join(full)}`: {error}") from error


def _failure(package: str, step: str, result: subprocess.CompletedProcess[str],
             ) -> SystemPackageError:
    tail = "\n".join(result.stdout.strip().splitlines()[-15:])
    return SystemPackageError(
        f"the tests need the Debian package {package!r} and {step} failed "
        f"(exit status {result.returncode}); install it by hand "
        f"(`apt-get install {package}`) or fix the cause:\n{tail}")
