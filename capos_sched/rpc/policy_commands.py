"""``capos-sched policy set|load|show``: the operator switches the running
daemon's scheduling policy through its Admin capability (``Admin.setPolicy``).

``policy_lines`` is the text form of a policy state, shared with ``stats`` and
``grants``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from capos_sched.core import BUILTIN_NAMES

from .addr import Address
from .commands import _admin, _fail, _run, admin_option

MAX_SOURCE_BYTES = 256 * 1024
"""The largest policy file ``policy load`` sends (the daemon's bound too)."""


def policy_lines(state: dict[str, Any]) -> list[str]:
    """A policy state (``AdminSession.policy()``) as text lines."""
    kind = "built-in" if state["builtin"] else "user policy"
    lines = [f"policy: {state['policy']} ({kind})"]
    bypass = state.get("bypass")
    if bypass is None:
        lines.append("bypass: none")
    else:
        what = (
            f"{bypass['thread']} waited {bypass['waited_ns'] / 1e6:.1f} ms under "
            f"{bypass['policy']}, at {bypass['at_ns'] / 1e9:.3f} s"
        )
        if bypass["active"]:
            lines.append(f"bypass: ACTIVE ({what}; the fallback runs until stalls clear)")
        else:
            lines.append(f"bypass: ended at {bypass['ended_ns'] / 1e9:.3f} s ({what})")
    exits = state["exits"]
    if not exits:
        lines.append("exits: none")
    else:
        lines.append(f"exits: {len(exits)}")
        for e in exits:
            where = f"{e['policy']}  {e['callback'] or '-'}"
            lines.append(f"  {e['at_ns'] / 1e9:.3f} s  {e['kind']}  {where}: {e['message']}")
    return lines


def _print_state(state: dict[str, Any], as_json: bool, **extra: Any) -> None:
    if as_json:
        click.echo(json.dumps({**extra, **state}, indent=2))
    else:
        for line in policy_lines(state):
            click.echo(line)


@click.group(
    epilog="""\b
Examples:
  capos-sched policy show
  capos-sched policy set eevdf
  capos-sched policy load examples/policies/simple.py
  capos-sched policy show --json | jq '.exits'
"""
)
def policy() -> None:
    """Show or switch the running daemon's scheduling policy (docs/policies.md).

    A switch is atomic: no thread is lost or runs twice, and run time and
    virtual run time carry over. It also ends a watchdog bypass.
    """


@policy.command(
    "show",
    epilog="""\b
Examples:
  capos-sched policy show
  capos-sched policy show --json --admin unix:/run/capos/admin.sock
""",
)
@admin_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(admin_addr: Address | None, as_json: bool) -> None:
    """The policy in force, the watchdog's last bypass and the ejection records."""
    from capos_sched.client import connect_admin

    async def go() -> dict[str, Any]:
        async with await connect_admin(_admin(admin_addr)) as session:
            return await session.policy()

    _print_state(_run(go, _admin(admin_addr)), as_json)


@policy.command(
    "set",
    epilog="""\b
Examples:
  capos-sched policy set eevdf
  capos-sched policy set wfq --json

\b
Exit status: 0 when NAME is in force; 1 when the daemon refused it or cannot
be reached; 2 on a usage error.
""",
)
@admin_option
@click.option("--json", "as_json", is_flag=True, help="Print the state after the switch as JSON.")
@click.argument("name", type=click.Choice(BUILTIN_NAMES))
def set_(admin_addr: Address | None, as_json: bool, name: str) -> None:
    """Switch to the built-in policy NAME (a user policy: `policy load FILE`)."""
    state = _set(admin_addr, name, "")
    _print_state(state, as_json, requested=name)
    if state["policy"] != name:  # pragma: no cover - a built-in does not fail
        _fail(f"failed: {name} is not in force (the daemon runs {state['policy']})")


@policy.command(
    "load",
    epilog="""\b
Examples:
  capos-sched policy load examples/policies/simple.py
  capos-sched policy load my_policy.py --json

\b
FILE is a Python module exposing POLICY (docs/policies.md). It runs inside the
daemon as the operator's code, its callbacks bounded like a --policy file's.
Exit status: 0 when it is in force; 1 when the daemon refused it (a syntax
error, no POLICY...: nothing changed), when it was ejected while taking over
(the fallback runs; the exit record is printed), or when the daemon cannot be
reached; 2 on a usage error.
""",
)
@admin_option
@click.option("--json", "as_json", is_flag=True, help="Print the state after the switch as JSON.")
@click.argument("file", type=click.Path(path_type=Path))
def load_(admin_addr: Address | None, as_json: bool, file: Path) -> None:
    """Load the user policy FILE into the running daemon and switch to it."""
    source = _read_source(file)
    name = str(file) if len(str(file)) <= 256 else file.name[-256:]
    state = _set(admin_addr, name, source)
    _print_state(state, as_json, requested=str(file))
    if state["builtin"]:
        last = state["exits"][-1] if state["exits"] else None
        why = f": {last['kind']} in {last['callback'] or '-'}: {last['message']}" if last else ""
        _fail(f"failed: {file} was ejected while taking over{why}")


def _read_source(file: Path) -> str:
    try:
        data = file.read_bytes()
    except OSError as exc:
        _fail(f"invalidArgument: cannot read policy {file}: {exc.strerror or exc}")
    if len(data) > MAX_SOURCE_BYTES:
        _fail(f"invalidArgument: policy {file} is larger than {MAX_SOURCE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        _fail(f"invalidArgument: policy {file} is not UTF-8 text")
    raise AssertionError("unreachable")


def _set(admin_addr: Address | None, name: str, source: str) -> dict[str, Any]:
    from capos_sched.client import connect_admin

    async def go() -> dict[str, Any]:
        async with await connect_admin(_admin(admin_addr)) as session:
            return await session.set_policy(name, source)

    return _run(go, _admin(admin_addr))
