"""The layer rules of docs/architecture.md, checked on the source with `ast`.

Imports flow one way: domain < (protocol, storage) < services < (web, cli). storage is
the only rocksdict user and speaks storage errors, not HTTP ones. No module reaches into
another object's private attributes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent.parent / "src" / "chatd"

#: What each package may not import from.
FORBIDDEN = {
    "domain": ("chatd.protocol", "chatd.storage", "chatd.services", "chatd.web"),
    "protocol": ("chatd.storage", "chatd.services", "chatd.web"),
    "storage": ("chatd.protocol", "chatd.services", "chatd.web"),
    "services": ("chatd.web",),
    "transport": ("chatd.web", "chatd.services", "chatd.storage"),
    # The etcd client knows nothing of chatd: it could be a library of its own.
    "coordination": ("chatd.web", "chatd.services", "chatd.storage", "chatd.protocol",
                     "chatd.replication", "chatd.transport", "chatd.domain"),
    "replication": ("chatd.web",),
    # The client SDK's end-to-end encryption: a client, it knows the server only by wire.
    "e2e": ("chatd.web", "chatd.services", "chatd.storage", "chatd.replication",
            "chatd.transport"),
}


def modules() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(), str(path))) for path in sorted(SOURCE.rglob("*.py"))]


def imported(tree: ast.Module) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def package_of(path: Path) -> str:
    relative = path.relative_to(SOURCE)
    return relative.parts[0] if len(relative.parts) > 1 else ""


@pytest.mark.parametrize(("path", "tree"), modules(), ids=lambda value: (
    str(value.relative_to(SOURCE)) if isinstance(value, Path) else ""))
def test_layer_rules(path: Path, tree: ast.Module) -> None:
    package = package_of(path)
    for name in imported(tree):
        for forbidden in FORBIDDEN.get(package, ()):
            assert not name.startswith(forbidden), f"{package}/ must not import {name}"
        if package != "storage":
            assert not name.startswith("rocksdict"), "only storage/ may use rocksdict"
    if package == "storage":
        from_errors = {alias.asname or alias.name for node in ast.walk(tree)
                       if isinstance(node, ast.ImportFrom) and node.module == "chatd.errors"
                       for alias in node.names}
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and node.exc is not None:
                raised = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                assert not (isinstance(raised, ast.Name) and raised.id in from_errors), (
                    f"storage raises {raised.id}, a client-facing error: raise a storage "
                    "error and let the services map it")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
            pytest.fail(f"{path.relative_to(SOURCE)}:{node.lineno} reaches into "
                        f"{ast.unparse(node)}, a private attribute of another object")
