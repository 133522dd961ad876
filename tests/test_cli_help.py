"""Every command's --help: examples in the epilog, help on every option, every
default shown; one --cpus limit; the environment and exit codes documented."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from capos_sched.cli import main
from capos_sched.core import LatencyClass
from capos_sched.core.constants import MAX_CPUS
from capos_sched.manifest import ManifestError, load_plan_text


def walk(command: click.Command, path: tuple[str, ...]) -> Iterator[tuple[str, click.Command]]:
    yield " ".join(path), command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from walk(sub, (*path, name))


COMMANDS = dict(walk(main, ("capos-sched",)))


def help_text(path: str) -> str:
    result = CliRunner().invoke(main, [*path.split()[1:], "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.output


def options(command: click.Command) -> list[click.Option]:
    return [
        p
        for p in command.params
        if isinstance(p, click.Option) and p.name not in ("help", "version")
    ]


def test_the_walk_finds_every_command() -> None:
    assert {"capos-sched run", "capos-sched serve", "capos-sched bench rpc"} <= set(COMMANDS)
    assert len(COMMANDS) >= 18


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_command_has_examples_in_its_epilog(path: str) -> None:
    epilog = COMMANDS[path].epilog or ""
    assert "Examples:" in epilog, f"{path}: no examples"
    example_lines = [ln.strip() for ln in epilog.splitlines() if ln.strip().startswith(path)]
    assert example_lines, f"{path}: no example runs `{path}`"
    text = help_text(path)
    assert "Examples:" in text and example_lines[0] in text  # kept verbatim, not rewrapped


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_option_has_help_and_shows_its_default(path: str) -> None:
    command = COMMANDS[path]
    ctx = click.Context(command, info_name=path.split()[-1])
    for option in options(command):
        record = option.get_help_record(ctx)
        assert record is not None, f"{path} {option.opts[0]} is hidden"
        opts, text = record
        assert option.help, f"{path} {opts}: no help text"
        default = option.get_default(ctx)
        plain_flag = option.is_flag and not option.secondary_opts and not default
        if not plain_flag:
            assert "[default: " in text, f"{path} {opts}: the default is not shown"


def test_one_cpus_limit_everywhere() -> None:
    limits = {}
    for path, command in COMMANDS.items():
        for option in options(command):
            if option.name == "cpus":
                assert isinstance(option.type, click.IntRange), path
                limits[path] = (option.type.min, option.type.max)
    assert {"capos-sched run", "capos-sched simulate", "capos-sched serve"} <= set(limits)
    assert set(limits.values()) == {(1, MAX_CPUS)}, limits
    # ... and it is the manifest schema's limit
    load_plan_text(f"machine: cpus: {MAX_CPUS}\n")
    with pytest.raises(ManifestError, match=f"outside \\[1, {MAX_CPUS}\\]"):
        load_plan_text(f"machine: cpus: {MAX_CPUS + 1}\n")
    over = CliRunner().invoke(main, ["simulate", "--cpus", str(MAX_CPUS + 1)])
    assert over.exit_code == 2 and f"1<=x<={MAX_CPUS}" in over.output


def test_the_jitter_default_shown_is_the_one_used() -> None:
    from capos_sched.runtime.simulate import DEFAULT_JITTER

    assert f"[default: {DEFAULT_JITTER:g}]" in " ".join(help_text("capos-sched simulate").split())


def test_set_class_lists_the_latency_classes() -> None:
    text = help_text("capos-sched set-class")
    for latency_class in LatencyClass:
        assert latency_class.wire_name in text


def test_the_environment_and_exit_codes_are_documented() -> None:
    top = " ".join(help_text("capos-sched").split())
    for needle in (
        "CAPOS_SCHED_DISABLE_WFQ",
        "CAPOS_SCHED_RUN_DIR",
        "$XDG_RUNTIME_DIR/capos-sched",
        "/tmp/capos-sched-<uid>",
        "130",
        "143",
    ):
        assert needle in top, needle
    for path in ("capos-sched run", "capos-sched simulate", "capos-sched serve"):
        assert "CAPOS_SCHED_DISABLE_WFQ" in help_text(path), path
    run = " ".join(help_text("capos-sched run").split())
    assert "130" in run and "143" in run
    serve = " ".join(help_text("capos-sched serve").split())
    assert "exits 0 on SIGINT or SIGTERM" in serve
    assert "/tmp/capos-sched-<uid>" in serve


def test_the_shipped_manifests_name_only_commands_that_exist() -> None:
    import re
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[1] / "manifests"
    named = set()
    for manifest in shipped.glob("*.cue"):
        comments = [ln for ln in manifest.read_text().splitlines() if ln.lstrip().startswith("//")]
        named |= set(re.findall(r"`capos-sched ([a-z-]+)", "\n".join(comments)))
    assert "run" in named  # default.cue says who runs it
    assert not {n for n in named if n not in main.commands}, named
