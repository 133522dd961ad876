"""``capos-sched cpus show|grant|revoke|kill``: the operator's view of CPU delegation.

Every command talks to the admin socket: ``Admin.cpuDelegation`` is the root
node, and a command on scheduler CHILD acts through CHILD's parent node, found
by walking the tree from the root (``children``, ``child``), so the daemon's
fail-closed rules apply exactly as they do to any other holder of a node.
"""

from __future__ import annotations

import json
from typing import Any

import click

from capos_sched.wire import CPU_CAPS

from .commands import Address, _admin, _print_table, _run, admin_option

CPUS_EPILOG = """\b
Examples:
  capos-sched cpus show
  capos-sched cpus grant web 1,2 enq
  capos-sched cpus revoke web 2 enq
  capos-sched cpus kill batch --reason "over budget"

\b
Caps (each implies the ones before it):
  enqImmed   use the CPU at all
  enq        queue any of its threads there
  preempt    cut short a thread of a scheduler outside its subtree
"""


def json_option(fn: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(fn)


def parse_cpus(text: str) -> list[int]:
    """``1,2``, ``0-3`` or a mix (``0-1,5``): CPU numbers, in order, no repeats."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        low, sep, high = part.partition("-")
        try:
            first = int(low)
            last = int(high) if sep else first
        except ValueError:
            raise click.BadParameter(
                f"{part!r} is not a CPU number or range (write 1,2 or 0-3)"
            ) from None
        if first < 0 or last < first or last > 0xFFFF:
            raise click.BadParameter(f"CPU range {part!r} is empty or out of range")
        out += [c for c in range(first, last + 1) if c not in out]
    return out


def parse_caps(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in CPU_CAPS]
    if bad or not names:
        raise click.BadParameter(
            f"unknown cap {bad[0] if bad else text!r}; expected {', '.join(CPU_CAPS)} "
            "(comma-separated)"
        )
    return names


class _Cpus(click.ParamType):
    name = "CPUS"

    def convert(self, value: Any, param: Any, ctx: Any) -> list[int]:
        if isinstance(value, list):
            return value
        try:
            return parse_cpus(str(value))
        except click.BadParameter as exc:
            self.fail(exc.message, param, ctx)


class _Caps(click.ParamType):
    name = "CAPS"

    def convert(self, value: Any, param: Any, ctx: Any) -> list[str]:
        if isinstance(value, list):
            return value
        try:
            return parse_caps(str(value))
        except click.BadParameter as exc:
            self.fail(exc.message, param, ctx)


async def parent_node(root: Any, child: str) -> Any:
    """The node of ``child``'s parent, found by walking the tree from ``root``."""
    from capos_sched.client import InvalidArgument

    todo = [root]
    while todo:
        node = todo.pop(0)
        names = await node.children()
        if child in names:
            return node
        for name in names:
            todo.append(await node.child(name))
    raise InvalidArgument(
        f"no scheduler named {child!r} below the root (see `capos-sched cpus show`)"
    )


@click.group(epilog=CPUS_EPILOG)
def cpus() -> None:
    """CPU delegation: which scheduler holds which caps on which CPU."""


@cpus.command(
    epilog="""\b
Examples:
  capos-sched cpus show
  capos-sched cpus show --json | jq '.[] | {name, holdings}'
"""
)
@admin_option
@json_option
def show(admin_addr: Address | None, as_json: bool) -> None:
    """Every scheduler: its CPUs (held / effective caps), counters and exit record."""
    from capos_sched.client import connect_admin

    async def go() -> list[dict[str, Any]]:
        async with await connect_admin(_admin(admin_addr)) as session:
            return await session.schedulers()

    rows = _run(go, _admin(admin_addr))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = [("SCHEDULER", "PARENT", "STATE", "CPUS", "REJECTED", "FORCED", "EVICTIONS")]
    for row in rows:
        state = "alive" if row["alive"] else (row["exit"] or {}).get("kind", "gone")
        table.append(
            (
                row["name"],
                row["parent"] or "-",
                state,
                _cpus_text(row["holdings"]),
                str(row["rejected_inserts"]),
                str(row["forced_admits"]),
                str(row["evictions"]),
            )
        )
    _print_table(table)
    for row in rows:
        if row["exit"]:
            click.echo(f"{row['name']}: {row['exit']['kind']}: {row['exit']['message'] or '-'}")


def scheduler_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per scheduler for ``stats`` (nothing when only the root exists)."""
    if len(rows) <= 1:
        return []
    out = []
    for row in rows:
        state = "" if row["alive"] else f" {(row['exit'] or {}).get('kind', 'gone')}"
        out.append(
            f"scheduler {row['name']}{state}: cpus {_cpus_text(row['holdings'])}, "
            f"rejected={row['rejected_inserts']} forced={row['forced_admits']} "
            f"denied_kicks={row['denied_kicks']} denied_preempts={row['denied_preempts']} "
            f"evictions={row['evictions']}"
        )
    return out


def _cpus_text(holdings: list[dict[str, Any]]) -> str:
    """``0:preempt 1-2:enq``: CPUs grouped by the caps held literally."""
    if not holdings:
        return "-"
    parts: list[str] = []
    run: list[int] = []
    caps: tuple[str, ...] | None = None

    def flush() -> None:
        if run:
            span = str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"
            parts.append(f"{span}:{'+'.join(caps or ()) or '-'}")

    for h in holdings:
        held = tuple(h["held"])
        if run and held == caps and h["cpu"] == run[-1] + 1:
            run.append(h["cpu"])
            continue
        flush()
        run, caps = [h["cpu"]], held
    flush()
    return " ".join(parts)


@cpus.command(
    epilog="""\b
Examples:
  capos-sched cpus grant web 1,2 enq
  capos-sched cpus grant batch 0-3 enqImmed --json

\b
All or nothing per CPU: a CPU is denied unless CHILD's parent holds every
cap asked for there literally (implied caps are never re-delegated).
Exit status: 0 when every CPU was granted; 3 when some were denied; 1 on
an error (nothing changed); 2 on a usage error.
"""
)
@admin_option
@json_option
@click.argument("child")
@click.argument("cpu_list", metavar="CPUS", type=_Cpus())
@click.argument("caps", metavar="CAPS", type=_Caps())
def grant(
    admin_addr: Address | None, as_json: bool, child: str, cpu_list: list[int], caps: list[str]
) -> None:
    """Grant CAPS on CPUS to scheduler CHILD (from its parent)."""
    from capos_sched.client import connect_admin

    async def go() -> list[int]:
        async with await connect_admin(_admin(admin_addr)) as session:
            parent = await parent_node(await session.cpu_delegation(), child)
            return await parent.grant(child, cpu_list, caps)

    denied = _run(go, _admin(admin_addr))
    if as_json:
        click.echo(json.dumps({"child": child, "cpus": cpu_list, "caps": caps, "denied": denied}))
    else:
        click.echo(f"denied: {' '.join(map(str, denied)) or '-'}")
    if denied:
        raise SystemExit(3)


@cpus.command(
    epilog="""\b
Examples:
  capos-sched cpus revoke web 2 enq
  capos-sched cpus revoke web 0-3 enqImmed     # takes the CPUs away entirely

\b
Clears CAPS (and the caps implying them) from CHILD and its whole subtree;
their threads queued or running there are evicted.
"""
)
@admin_option
@json_option
@click.argument("child")
@click.argument("cpu_list", metavar="CPUS", type=_Cpus())
@click.argument("caps", metavar="CAPS", type=_Caps())
def revoke(
    admin_addr: Address | None, as_json: bool, child: str, cpu_list: list[int], caps: list[str]
) -> None:
    """Revoke CAPS on CPUS from scheduler CHILD and its subtree."""
    from capos_sched.client import connect_admin

    async def go() -> list[Any]:
        async with await connect_admin(_admin(admin_addr)) as session:
            parent = await parent_node(await session.cpu_delegation(), child)
            await parent.revoke(child, cpu_list, caps)
            return await parent.child_holdings(child)

    after = _run(go, _admin(admin_addr))
    if as_json:
        click.echo(json.dumps({"child": child, "holdings": [h.as_dict() for h in after]}))
    else:
        click.echo(f"{child} now holds: {_cpus_text([h.as_dict() for h in after])}")


@cpus.command(
    epilog="""\b
Examples:
  capos-sched cpus kill batch --reason "runaway policy"

\b
Tears down CHILD's subtree; its threads re-home to its parent with their
accounting intact. The kill leaves a parentKill exit record (cpus show).
"""
)
@admin_option
@json_option
@click.argument("child")
@click.option(
    "--reason", default="operator kill", show_default=True, help="The message of the exit record."
)
def kill(admin_addr: Address | None, as_json: bool, child: str, reason: str) -> None:
    """Kill scheduler CHILD (and its subtree)."""
    from capos_sched.client import connect_admin

    async def go() -> None:
        async with await connect_admin(_admin(admin_addr)) as session:
            parent = await parent_node(await session.cpu_delegation(), child)
            await parent.kill(child, reason)

    _run(go, _admin(admin_addr))
    if as_json:
        click.echo(json.dumps({"killed": child, "reason": reason}))
    else:
        click.echo(f"killed: {child}")


__all__ = ["cpus", "parse_caps", "parse_cpus"]
