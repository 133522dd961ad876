"""docker-compose.yml and the Dockerfile, checked statically (Docker itself
cannot run on these machines): the compose file parses, builds the image the
Dockerfile describes, and every command it runs exists in that image and
accepts its arguments; the Dockerfile copies only what exists and what
.dockerignore lets through, and installs offline from its own wheels.

The compose file is YAML restricted to its JSON-compatible subset: dropping
the lines whose first non-blank character is ``#`` leaves plain JSON (see its
header).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import click

from capos_sched.cli import main as capos_main

from .conftest import REPO
from .test_tuner import TUNER

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def load_compose(path: Path = COMPOSE) -> dict[str, Any]:
    lines = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
    return json.loads("\n".join(lines))


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


def dockerfile(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last:]


def image_files(stage: list[tuple[str, str]]) -> dict[str, Path]:
    """Where the final image's files under WORKDIR come from: image path -> checkout path."""
    files: dict[str, Path] = {}
    workdir = "/"
    for word, args in stage:
        if word == "WORKDIR":
            workdir = args
        elif word == "COPY" and not args.startswith("--from"):
            *sources, dest = shlex.split(args)
            for source in sources:
                target = dest if dest.startswith("/") else f"{workdir.rstrip('/')}/{dest}"
                files[target.rstrip("/")] = REPO / source
    return files


def in_image(path: str) -> Path:
    """The checkout file that the image holds at ``path`` (fails if it holds none)."""
    for prefix, source in image_files(final_stage(dockerfile())).items():
        if path == prefix or path.startswith(prefix + "/"):
            return source / path.removeprefix(prefix).lstrip("/")
    raise AssertionError(f"the image has no {path} (no COPY puts it there)")


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps ``relative`` (or a folder holding it) out of the context."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        for prefix in prefixes:
            if fnmatch.fnmatch(prefix, pattern) or fnmatch.fnmatch(prefix.split("/")[-1], bare):
                return True
    return False


def dockerignore() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def test_compose_file_parses_and_its_commands_exist() -> None:
    doc = load_compose()
    services = doc["services"]
    assert set(services) == {"daemon", "tuner"}
    assert set(doc["volumes"]) >= {"grants"}
    for name, service in services.items():
        # the image is built, not assembled at each start from a mounted checkout
        assert service["build"] == {"context": ".", "dockerfile": "Dockerfile"}, name
        assert service["image"] == services["daemon"]["image"], name
        for volume in service["volumes"]:
            assert not volume.startswith((".", "/", "~")), f"{name} mounts a host path: {volume}"
        command = service["command"]
        assert command[0] != "sh" and "pip" not in command, f"{name} installs at start"

    serve = _check_cli(services["daemon"]["command"])
    assert serve.info_name == "serve"
    assert serve.parent is not None and serve.parent.params["log_format"] == "json"
    assert in_image(str(serve.params["manifest"])).is_file()
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

    tuner_cmd = services["tuner"]["command"]
    assert tuner_cmd[0] == "python" and in_image(tuner_cmd[1]) == TUNER
    assert (TUNER / "__main__.py").is_file()
    tuner_main = _load_tuner_main()
    ctx = tuner_main.make_context("tuner", tuner_cmd[2:])
    assert ctx.params["connect_addr"] == f"tcp:daemon:{listen.port}"
    assert ctx.params["token_file"] == "/grants/tuner.token"
    assert services["tuner"]["depends_on"]["daemon"]["condition"] == "service_healthy"
    assert "grants:/grants:ro" in services["tuner"]["volumes"]


def test_the_dockerfile_builds_from_what_the_context_holds() -> None:
    instructions = dockerfile()
    patterns = dockerignore()
    for needed in (".git", ".venv", "**/__pycache__", "build", "dist"):
        assert needed in patterns, f".dockerignore must exclude {needed}"
    # every COPY from the context names something that exists and is not ignored
    for word, args in instructions:
        if word == "COPY" and not args.startswith("--from"):
            *sources, _ = shlex.split(args)
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: no such file"
                assert not ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
    # the package's own sources (and the links in capos_sched/_data) reach the build
    for source in ("capos_sched/_data/schema", "schema/capos.capnp", "manifests/default.cue"):
        assert not ignored(source, patterns), source

    bases = [args.split()[0] for word, args in instructions if word == "FROM"]
    required = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(n) for n in re.fullmatch(r">=(\d+)\.(\d+)", required).groups())
    for base in bases:
        match = re.fullmatch(r"python:(\d+)\.(\d+)(-slim)?", base)
        assert match, f"unexpected base image {base}"
        assert tuple(int(n) for n in match.groups()[:2]) >= minimum, base

    stage = final_stage(instructions)
    runs = " ".join(args for word, args in stage if word == "RUN")
    assert "pip install" in runs and "--no-index" in runs, "the image installs offline"
    assert "-e " not in runs and "--editable" not in runs
    users = [args for word, args in stage if word == "USER"]
    assert users and users[-1] not in ("root", "0"), "the services run unprivileged"
    assert any(word == "CMD" for word, _ in stage)


def test_the_static_checks_can_fail(tmp_path: Path) -> None:
    assert ignored(".venv/bin/python", dockerignore())
    assert ignored("capos_sched/__pycache__/cli.cpython-311.pyc", dockerignore())
    try:
        in_image("/app/nowhere/at-all.cue")
    except AssertionError:
        pass
    else:
        raise AssertionError("in_image must refuse a path no COPY provides")
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM python:3.11-slim\nRUN true \\\n")
    try:
        dockerfile(broken)
    except AssertionError:
        return
    raise AssertionError("a Dockerfile ending inside a continued line must not parse")


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
