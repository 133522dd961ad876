"""docker-compose.yml parses, and every command it runs exists and accepts its
arguments (Docker itself cannot run on these machines).

The file is YAML restricted to its JSON-compatible subset: dropping the lines
whose first non-blank character is ``#`` leaves plain JSON (see its header).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import click

from capos_sched.cli import main as capos_main

from .conftest import REPO
from .test_tuner import TUNER

COMPOSE = REPO / "docker-compose.yml"


def load_compose(path: Path = COMPOSE) -> dict[str, Any]:
    lines = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
    return json.loads("\n".join(lines))


def _commands(service: dict[str, Any]) -> list[list[str]]:
    """The programs a service runs: its `sh -c` script split at `&&`."""
    command = service["command"]
    assert command[:2] == ["sh", "-c"], command
    out = []
    for part in command[2].split("&&"):
        argv = shlex.split(part)
        if argv and argv[0] == "exec":
            argv = argv[1:]
        out.append(argv)
    return out


def _check_cli(argv: list[str]) -> click.Context:
    """Parse ``capos-sched ARGV`` with the real CLI (nothing runs)."""
    assert argv[0] == "capos-sched"
    args = list(argv[1:])
    i = 0
    while i < len(args) and args[i].startswith("-"):  # the group's own options
        i += 1 if "=" in args[i] else 2
    ctx = capos_main.make_context("capos-sched", list(args))  # validates group options
    sub = capos_main.get_command(ctx, args[i])
    assert sub is not None, f"capos-sched has no command {args[i]!r}"
    return sub.make_context(args[i], args[i + 1 :], parent=ctx)


def _in_repo(path: str) -> Path:
    assert path.startswith("/app/"), path
    return REPO / path.removeprefix("/app/")


def test_compose_file_parses_and_its_commands_exist() -> None:
    doc = load_compose()
    services = doc["services"]
    assert set(services) == {"daemon", "tuner"}
    assert set(doc["volumes"]) >= {"grants"}

    daemon_cmds = _commands(services["daemon"])
    assert daemon_cmds[0][:2] == ["cp", "-r"] and daemon_cmds[1][:2] == ["pip", "install"]
    serve = _check_cli(daemon_cmds[-1])
    assert serve.info_name == "serve"
    assert _in_repo(str(serve.params["manifest"])).is_file()
    listen = serve.params["listen"]
    assert (listen.kind, listen.host, listen.port) == ("tcp", "0.0.0.0", 7070)
    assert serve.params["admin"].kind == "unix"
    assert str(serve.params["grants_dir"]) == "/grants"
    assert "7070" in services["daemon"]["expose"]

    health = services["daemon"]["healthcheck"]["test"]
    assert health[0] == "CMD"
    grants = _check_cli(health[1:])
    assert grants.info_name == "grants"
    assert str(grants.params["admin_addr"]) == str(serve.params["admin"])

    tuner_cmd = _commands(services["tuner"])[-1]
    assert tuner_cmd[0] == "python" and _in_repo(tuner_cmd[1]) == TUNER
    assert (TUNER / "__main__.py").is_file()
    tuner_main = _load_tuner_main()
    ctx = tuner_main.make_context("tuner", tuner_cmd[2:])
    assert ctx.params["connect_addr"] == f"tcp:daemon:{listen.port}"
    assert ctx.params["token_file"] == "/grants/tuner.token"
    assert services["tuner"]["depends_on"]["daemon"]["condition"] == "service_healthy"
    assert "grants:/grants:ro" in services["tuner"]["volumes"]


def test_the_parser_rejects_what_is_not_json_compatible(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  daemon:\n    image: x\n")  # valid YAML, not the subset
    try:
        load_compose(bad)
    except json.JSONDecodeError:
        return
    raise AssertionError("block-style YAML must not parse as the JSON subset")


def _load_tuner_main() -> click.Command:
    import importlib.util
    import sys

    sys.path.insert(0, str(TUNER))
    try:
        spec = importlib.util.spec_from_file_location("tuner_main", TUNER / "__main__.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(TUNER))
    return module.main
