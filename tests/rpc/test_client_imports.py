"""The client library shares only ``capos_sched.wire`` with the server (GUIDE: the
client imports nothing of the core, the RPC layer or the runtime)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from capos_sched import client, wire
from capos_sched.core import LatencyClass as CoreLatencyClass
from capos_sched.core import ThreadState as CoreThreadState

SERVER_PACKAGES = (
    "capos_sched.core",
    "capos_sched.rpc",
    "capos_sched.runtime",
    "capos_sched.manifest",
)
ALLOWED = {"capos_sched.wire"}


def _capos_imports(path: str) -> set[str]:
    """Every capos_sched module an import statement anywhere in ``path`` names."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("capos_sched"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: client.py is a top-level module of capos_sched
                found.add("capos_sched." + (node.module or ""))
            elif node.module and node.module.startswith("capos_sched"):
                found.add(node.module)
    return found


def test_client_source_imports_only_wire() -> None:
    assert client.__file__ is not None
    assert _capos_imports(client.__file__) <= ALLOWED


def test_importing_the_client_loads_no_server_module() -> None:
    code = (
        "import sys, capos_sched.client\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith('capos_sched')))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "capos_sched.client" in out  # the probe really ran
    leaked = [m for m in out if m.startswith(SERVER_PACKAGES)]
    assert leaked == []


def test_wire_enums_match_the_core_and_the_schema() -> None:
    schema = wire.capos()
    for mine, core, schema_enum in (
        (wire.LatencyClass, CoreLatencyClass, schema.LatencyClass),
        (wire.ThreadState, CoreThreadState, schema.ThreadState),
    ):
        assert [(m.name, m.value) for m in mine] == [(m.name, m.value) for m in core]
        assert len(mine) == len(schema_enum.schema.enumerants)
    for member in CoreLatencyClass:
        assert wire.LatencyClass(member.value).wire_name == member.wire_name
        assert schema.LatencyClass.schema.enumerants[member.wire_name] == member.value
        assert wire.LatencyClass.parse(member) is wire.LatencyClass(member.value)
        assert wire.LatencyClass.parse(member.wire_name) is wire.LatencyClass(member.value)


def test_client_enum_parse_refuses_unknown_values() -> None:
    for bad in ("fast", 4, -1, True, None):
        try:
            wire.LatencyClass.parse(bad)
        except ValueError as exc:
            assert "expected one of interactive, normal, batch, ipcServer" in str(exc)
        else:
            raise AssertionError(f"{bad!r} was accepted")
