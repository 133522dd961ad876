"""Checks beyond types, and the construction of the Plan.

The schema (schema/manifest.cue) already guarantees types, bounds, allowed
fields and classes. This module checks what unification cannot express in
the supported subset, each problem at its position:

- durations written as strings ("4ms") are well formed and whole nanoseconds;
- process and thread names can form an unambiguous ``process/thread`` name;
- a thread or grant is declared once within its ``{...}`` (CUE would
  silently merge two declarations of the same name, which hides copy-paste
  mistakes);
- a thread grant names an existing thread;
- every IPC endpoint with clients has a server, and at most one.
"""

from __future__ import annotations

import decimal
import difflib
import pathlib
import re
from collections.abc import Callable, Iterator
from typing import Any

from capos_sched.core.delegation import MIN_POOL_ROTATION_NS
from capos_sched.core.thread import LatencyClass
from capos_sched.workload import Hash, IpcClient, IpcServer, Sleeper, Spin, Workload

from . import syntax
from .errors import Diagnostics, Pos, quote, show_name
from .evaluator import Exported, Path
from .plan import (
    BUILTIN_POLICIES,
    MAX_SCHEDULER_DEPTH,
    ROOT_SCHEDULER,
    DelegationEventPlan,
    GrantPlan,
    MachinePlan,
    Plan,
    ProcessPlan,
    SchedulerPlan,
    ThreadPlan,
)

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|ms|s)")
_UNIT_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class DurationError(ValueError):
    """A duration string that is malformed or not whole nanoseconds."""


def parse_duration(value: int | str) -> int:
    """Nanoseconds from a manifest duration: an int (already nanoseconds) or a
    decimal number with a unit ns, us, ms or s ("250us", "1.5ms").

    Raises DurationError, saying what is wrong, for anything else.
    """
    if isinstance(value, bool):
        raise DurationError(f"{value!r} is not a duration")
    if isinstance(value, int):
        return value
    match = _DURATION.fullmatch(value)
    if match is None:
        raise DurationError(
            f"invalid duration {quote(value)}: write a number with a unit ns, us, ms or s "
            '(such as "250us" or "1.5ms"), or integer nanoseconds'
        )
    number, unit = match.groups()
    nanoseconds = decimal.Decimal(number) * _UNIT_NS[unit]
    if nanoseconds != nanoseconds.to_integral_value():
        raise DurationError(f"duration {quote(value)} is not a whole number of nanoseconds")
    return int(nanoseconds)


class _Builder:
    """Builds the Plan's parts from exported data, reporting model problems at
    their positions. ``failed`` becomes True when some part could not be
    built, whether the problem was reported here or earlier (then no Plan)."""

    def __init__(self, exported: Exported, diagnostics: Diagnostics, fallback: Pos) -> None:
        self.exported = exported
        self.diagnostics = diagnostics
        self.fallback = fallback
        self.failed = False
        self.base_dir: pathlib.Path | None = None
        """The manifest's directory: a policy file is resolved relative to it."""

    def value_pos(self, path: Path) -> Pos:
        """Where the value at ``path`` was written (or the nearest enclosing one)."""
        positions = self.exported.value_positions
        for end in range(len(path), -1, -1):
            pos = positions.get(path[:end])
            if pos is not None and not pos.source.is_schema:
                return pos
            label = self.exported.label_positions.get(path[:end])
            if label is not None and not label.source.is_schema:
                return label
        return self.fallback

    def label_pos(self, path: Path) -> Pos:
        pos = self.exported.label_positions.get(path)
        if pos is not None and not pos.source.is_schema:
            return pos
        return self.value_pos(path)

    def error(self, pos: Pos, message: str) -> None:
        self.failed = True
        self.diagnostics.error(pos, message)

    def duration(self, data: dict[str, Any], key: str, path: Path, positive: bool) -> int | None:
        if key not in data:
            return None
        raw = data[key]
        try:
            nanoseconds = parse_duration(raw)
        except DurationError as error:
            self.error(self.value_pos((*path, key)), f"`{key}`: {error}")
            return None
        if nanoseconds < 0 or (positive and nanoseconds == 0):
            need = "> 0" if positive else ">= 0"
            shown = quote(raw) if isinstance(raw, str) else str(raw)
            self.error(self.value_pos((*path, key)), f"{key} {shown} must be {need}")
            return None
        return nanoseconds

    def name(self, what: str, name: str, path: Path) -> bool:
        if _NAME.fullmatch(name):
            return True
        self.error(
            self.label_pos(path),
            f"{what} name {quote(name)} is not valid: use letters, digits, `_`, `-` and `.` "
            "(it forms part of a `process/thread` name)",
        )
        return False

    # -- the model ---------------------------------------------------------
    def machine(self, data: Any) -> MachinePlan | None:
        policy = None
        if isinstance(data, dict) and isinstance(data.get("policy"), str):
            policy = self.policy(data["policy"])  # the schema accepts any string here
        if not isinstance(data, dict) or not self.exported.intact(("machine",)):
            self.failed = True  # already reported
            return None
        slice_ns = self.duration(data, "slice", ("machine",), positive=True)
        if slice_ns is None or policy is None:
            return None
        rotation = self.duration(data, "poolRotation", ("machine",), positive=True)
        if "poolRotation" in data:
            if rotation is None:
                return None
            if rotation < MIN_POOL_ROTATION_NS:
                self.error(
                    self.value_pos(("machine", "poolRotation")),
                    f"poolRotation {quote(str(data['poolRotation']))} is below the minimum "
                    f"{MIN_POOL_ROTATION_NS // 1_000_000}ms",
                )
                return None
        return MachinePlan(data["cpus"], policy, slice_ns, pool_rotation_ns=rotation)

    def policy(self, value: str, path: Path = ("machine", "policy")) -> str | None:
        """A built-in name, or a policy file (``.py``) resolved relative to the
        manifest; the file is loaded (and executed) only when a run starts."""
        if value in BUILTIN_POLICIES:
            return value
        pos = self.value_pos(path)
        if not value.endswith(".py"):
            names = ", ".join(quote(n) for n in BUILTIN_POLICIES)
            self.error(
                pos, f"unknown policy {quote(value)}; expected one of {names}, or a file PATH.py"
            )
            return None
        path = pathlib.Path(value)
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        if not path.is_file():
            self.error(pos, f"policy file {quote(value)} not found (looked for {path})")
            return None
        return str(path)

    def workload(self, data: Any, path: Path) -> Workload | None:
        if not isinstance(data, dict) or not self.exported.intact(path):
            self.failed = True  # already reported
            return None
        kind = data["kind"]  # intact: every field the schema requires is there
        try:
            if kind == "spin":
                total = self.duration(data, "total", path, positive=True)
                if "total" in data and total is None:
                    return None
                return Spin(total)
            if kind == "hash":
                return Hash(data["blocks"], data["blockSize"], data["rounds"])
            if kind == "sleeper":
                burst = self.duration(data, "burst", path, positive=False)
                period = self.duration(data, "period", path, positive=True)
                if burst is None or period is None:
                    return None
                return Sleeper(burst, period, data.get("count"))
            if kind == "ipcClient":
                burst = self.duration(data, "burst", path, positive=False)
                if burst is None:
                    return None
                return IpcClient(data["endpoint"], burst, data.get("count"))
            if kind == "ipcServer":
                service = self.duration(data, "service", path, positive=False)
                if service is None:
                    return None
                return IpcServer(data["endpoint"], service)
        except ValueError as error:  # pragma: no cover - the schema rules these out
            self.error(self.value_pos(path), f"invalid workload: {error}")
            return None
        self.failed = True  # pragma: no cover - the schema allows no other kind
        return None

    def thread(self, process: str, name: str, data: Any, path: Path) -> ThreadPlan | None:
        if not isinstance(data, dict) or not self.exported.intact(path):
            self.failed = True  # already reported
            return None
        workload = self.workload(data.get("workload"), (*path, "workload"))
        if workload is None or "weight" not in data or "class" not in data:
            self.failed = True
            return None
        return ThreadPlan(
            process, name, data["weight"], LatencyClass.parse(data["class"]), workload
        )

    def process(self, name: str, data: Any, path: Path) -> ProcessPlan | None:
        if not isinstance(data, dict):
            self.failed = True
            return None
        threads: list[ThreadPlan] = []
        for thread_name, thread_data in _items(data.get("threads")):
            thread_path = (*path, "threads", thread_name)
            if not self.name("thread", thread_name, thread_path):
                continue
            thread = self.thread(name, thread_name, thread_data, thread_path)
            if thread is not None:
                threads.append(thread)
        command: tuple[str, ...] | None = None
        if not self.exported.intact((*path, "exec")):
            self.failed = True  # already reported
        elif "exec" in data:
            command = tuple(data["exec"])
            if not command:
                self.error(
                    self.label_pos((*path, "exec")),
                    "`exec` is an empty list; it must name a command to run",
                )
            for index, part in enumerate(command):
                if part == "":
                    self.error(
                        self.value_pos((*path, "exec", index)), "`exec` has an empty argument"
                    )
        grants: list[GrantPlan] = []
        for grant_name, grant in _items(data.get("grants")):
            if grant_name == "":
                self.error(self.label_pos((*path, "grants", "")), "a grant name must not be empty")
                continue
            if isinstance(grant, dict) and self.exported.intact((*path, "grants", grant_name)):
                grants.append(
                    GrantPlan(
                        grant_name,
                        grant["kind"],
                        grant.get("thread"),
                        scheduler=grant.get("scheduler"),
                    )
                )
            else:
                self.failed = True  # already reported
        scheduler = data.get("scheduler", ROOT_SCHEDULER)
        if self.failed or not isinstance(scheduler, str):
            return None
        return ProcessPlan(name, tuple(threads), command, tuple(grants), scheduler=scheduler)

    # -- sub-schedulers and timed delegation events (docs/delegation.md) ----

    def schedulers(self, data: Any, processes: Any) -> tuple[SchedulerPlan, ...]:
        """The declared sub-schedulers, parents first; unknown parents, cycles,
        depth over 4, bad policies and unknown process schedulers are errors."""
        found: dict[str, SchedulerPlan] = {}
        for name, body in _items(data):
            path: Path = ("schedulers", name)
            if not isinstance(body, dict) or not self.exported.intact(path):
                self.failed = True
                continue
            if name == ROOT_SCHEDULER:
                self.error(
                    self.label_pos(path),
                    'the scheduler "root" is the machine\'s own; declare sub-schedulers only',
                )
                continue
            if not self.name("scheduler", name, path):
                continue
            policy = body.get("policy")
            if policy is not None:
                policy = self.policy(policy, (*path, "policy"))
                if policy is None:
                    continue
            found[name] = SchedulerPlan(name, body["parent"], policy, body["weight"])
        depth: dict[str, int] = {ROOT_SCHEDULER: 0}
        ordered: list[SchedulerPlan] = []

        def place(name: str, chain: tuple[str, ...]) -> int | None:
            if name in depth:
                return depth[name]
            plan = found[name]
            parent_pos = self.value_pos(("schedulers", name, "parent"))
            if plan.parent in chain or plan.parent == name:
                cycle = " -> ".join((*chain, name, plan.parent))
                self.error(parent_pos, f"schedulers form a cycle: {cycle}")
                return None
            if plan.parent not in found and plan.parent != ROOT_SCHEDULER:
                self.error(
                    parent_pos,
                    f"scheduler {show_name(name)} names unknown parent {quote(plan.parent)}"
                    + _suggest(plan.parent, [ROOT_SCHEDULER, *found]),
                )
                return None
            up = place(plan.parent, (*chain, name)) if plan.parent != ROOT_SCHEDULER else 0
            if up is None:
                return None
            if up + 1 > MAX_SCHEDULER_DEPTH:
                self.error(
                    self.label_pos(("schedulers", name)),
                    f"scheduler {show_name(name)} is at depth {up + 1}; "
                    f"the tree may be at most {MAX_SCHEDULER_DEPTH} deep",
                )
                return None
            depth[name] = up + 1
            ordered.append(plan)
            return up + 1

        for name in found:
            if place(name, ()) is None:
                self.failed = True
        known = [ROOT_SCHEDULER, *found]
        for process, body in _items(processes):
            target = _get(body, "scheduler")
            if isinstance(target, str) and target not in known:
                self.error(
                    self.value_pos(("processes", process, "scheduler")),
                    f"process {show_name(process)} names unknown scheduler {quote(target)}"
                    + _suggest(target, known),
                )
        return tuple(ordered)

    def events(
        self, data: Any, schedulers: tuple[SchedulerPlan, ...], nr_cpus: int | None = None
    ) -> list[Any]:
        """The timed delegation events, by time (ties: manifest order); a CPU
        outside the machine is an error."""
        declared = [s.name for s in schedulers]
        events = []
        for name, body in _items(data):
            path: Path = ("events", name)
            if not isinstance(body, dict) or not self.exported.intact(path):
                self.failed = True
                continue
            at = self.duration(body, "at", path, positive=False)
            if at is None:
                continue
            child = body["child"]
            if child not in declared:
                self.error(
                    self.value_pos((*path, "child")),
                    f"event {show_name(name)} names {quote(child)}, which is not declared under "
                    "`schedulers:`" + _suggest(child, declared),
                )
                continue
            outside = [
                (i, c) for i, c in enumerate(body["cpus"]) if nr_cpus is not None and c >= nr_cpus
            ]
            if outside:
                self.error(
                    self.value_pos((*path, "cpus", outside[0][0])),
                    f"event {show_name(name)} names CPU {outside[0][1]}; the machine has "
                    f"CPUs 0-{nr_cpus - 1}",
                )
                continue
            if body["action"] != "kill" and not (body["cpus"] and body["caps"]):
                self.error(
                    self.label_pos(path),
                    f"event {show_name(name)}: a {body['action']} needs `cpus` and `caps`",
                )
                continue
            events.append(
                DelegationEventPlan(
                    name, at, body["action"], child, body["cpus"], body["caps"], body["reason"]
                )
            )
        events.sort(key=lambda e: e.at_ns)
        return events

    # -- whole-manifest checks ----------------------------------------------
    def grant_targets(self, processes: dict[str, Any]) -> None:
        # Every declared thread counts, even one whose value had an error.
        threads = [
            f"{path[1]}/{path[3]}"
            for path in self.exported.label_positions
            if len(path) == 4 and path[0] == "processes" and path[2] == "threads"
        ]

        def problem(target: str, suggestion: str | None) -> str:
            message = f"names thread {show_name(target)}, which does not exist"
            if suggestion:
                return message + f"; did you mean {show_name(suggestion)}?"
            if "/" not in target:
                message += "; name a thread as `process/thread`"
            return message

        self._unknown_grant_targets(processes, "thread", "thread", threads, problem)

    def grant_schedulers(self, processes: dict[str, Any], schedulers: Any) -> None:
        """Every cpuDelegation grant names "root" or a declared scheduler."""
        declared = [ROOT_SCHEDULER, *(name for name, _ in _items(schedulers))]

        def problem(target: str, suggestion: str | None) -> str:
            message = (
                f"names scheduler {quote(target)}, "
                'which is neither "root" nor declared under `schedulers:`'
            )
            return message + (f"; did you mean {quote(suggestion)}?" if suggestion else "")

        self._unknown_grant_targets(processes, "cpuDelegation", "scheduler", declared, problem)

    def _unknown_grant_targets(
        self,
        processes: dict[str, Any],
        kind: str,
        field: str,
        known: list[str],
        problem: Callable[[str, str | None], str],
    ) -> None:
        """An error at every ``kind`` grant whose ``field`` names none of
        ``known``: ``grant `g` <problem(target, closest known name or None)>``."""
        names = set(known)
        for process, body in _items(processes):
            for grant_name, grant in _items(_get(body, "grants")):
                target = _get(grant, field)
                if _get(grant, "kind") != kind or not isinstance(target, str) or target in names:
                    continue
                close = difflib.get_close_matches(target, known, n=1, cutoff=0.6)
                path = ("processes", process, "grants", grant_name, field)
                message = problem(target, close[0] if close else None)
                self.error(self.value_pos(path), f"grant {show_name(grant_name)} {message}")

    def endpoints(self, processes: dict[str, Any]) -> None:
        servers: dict[str, tuple[str, Path]] = {}
        clients: dict[str, Path] = {}
        for process, body in _items(processes):
            for thread, data in _items(_get(body, "threads")):
                workload = _get(data, "workload")
                endpoint = _get(workload, "endpoint")
                if not isinstance(endpoint, str):
                    continue
                path = ("processes", process, "threads", thread, "workload", "endpoint")
                kind = _get(workload, "kind")
                if kind == "ipcServer":
                    if endpoint in servers:
                        first_name, first_path = servers[endpoint]
                        first = self.value_pos(first_path)
                        self.error(
                            self.value_pos(path),
                            f"endpoint {quote(endpoint)} already has a server, "
                            f"{show_name(first_name)} (at {first.short(self.fallback.source)}); "
                            "an endpoint has exactly one server",
                        )
                    else:
                        servers[endpoint] = (f"{process}/{thread}", path)
                elif kind == "ipcClient":
                    clients.setdefault(endpoint, path)
        if any(
            len(path) >= 5 and path[0] == "processes" and path[2] == "threads"
            for path in self.exported.broken
        ):
            return  # a thread with an error may be the missing server
        for endpoint, path in clients.items():
            if endpoint not in servers:
                self.error(
                    self.value_pos(path),
                    f"endpoint {quote(endpoint)} has clients but no server "
                    f'(a thread with workload kind "ipcServer" and endpoint {quote(endpoint)})',
                )


def _items(value: Any) -> Iterator[tuple[str, Any]]:
    return iter(value.items()) if isinstance(value, dict) else iter(())


def _get(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None


def check_duplicates(file: syntax.File, diagnostics: Diagnostics) -> None:
    """Report a thread or grant declared twice in the same ``{...}``.

    A process may be declared in several places (``p: threads: ...`` and
    ``p: grants: ...``): its parts merge, as in CUE. A thread or a grant
    written twice in one block is almost always a copy-paste mistake that
    CUE would merge silently, so it is an error here.
    """
    for decl in file.decls:
        if not (isinstance(decl, syntax.Field) and decl.name == "processes"):
            continue
        for processes in _struct_literals(decl.value):
            for process in processes.decls:
                if not isinstance(process, syntax.Field):
                    continue
                for body in _struct_literals(process.value):
                    for member in body.decls:
                        if isinstance(member, syntax.Field) and member.name in _MEMBER_NOUNS:
                            noun = _MEMBER_NOUNS[member.name](process.name)
                            for literal in _struct_literals(member.value):
                                _check_unique(literal, noun, diagnostics)


_MEMBER_NOUNS: dict[str, Callable[[str], Callable[[str], str]]] = {
    "threads": lambda process: lambda name: f"thread {show_name(f'{process}/{name}')}",
    "grants": lambda process: (
        lambda name: f"grant {show_name(name)} of process {show_name(process)}"
    ),
}


def _struct_literals(expr: syntax.Expr) -> Iterator[syntax.StructLit]:
    if isinstance(expr, syntax.StructLit):
        yield expr
    elif isinstance(expr, syntax.Conj):
        for term in expr.terms:
            yield from _struct_literals(term)


def _check_unique(
    literal: syntax.StructLit, noun: Callable[[str], str], diagnostics: Diagnostics
) -> None:
    """Report every label the literal repeats, at the repetition."""
    first: dict[str, syntax.Field] = {}
    for decl in literal.decls:
        if not isinstance(decl, syntax.Field) or decl.kind is not syntax.LabelKind.REGULAR:
            continue
        previous = first.setdefault(decl.name, decl)
        if previous is not decl:
            where = previous.pos.short(decl.pos.source)
            diagnostics.error(decl.pos, f"duplicate {noun(decl.name)} (first declared at {where})")


def build_plan(
    exported: Exported, file: syntax.File, source_name: str, diagnostics: Diagnostics
) -> Plan | None:
    """The Plan for an exported manifest, or None when a check failed (reported)."""
    builder = _Builder(exported, diagnostics, Pos(file.source, 1, 1))
    if not source_name.startswith("<"):
        builder.base_dir = pathlib.Path(source_name).parent
    data = exported.data if isinstance(exported.data, dict) else {}
    check_duplicates(file, diagnostics)
    processes_data = data.get("processes")
    if file.complete:  # else a thread or server may be in the part that was dropped
        builder.grant_targets(processes_data if isinstance(processes_data, dict) else {})
        builder.endpoints(processes_data if isinstance(processes_data, dict) else {})
        builder.grant_schedulers(
            processes_data if isinstance(processes_data, dict) else {}, data.get("schedulers")
        )
    machine = builder.machine(data.get("machine"))
    processes: list[ProcessPlan] = []
    for name, body in _items(processes_data):
        path: Path = ("processes", name)
        if builder.name("process", name, path):
            process = builder.process(name, body, path)
            if process is not None:
                processes.append(process)
    schedulers = builder.schedulers(data.get("schedulers"), processes_data)
    events = builder.events(
        data.get("events"), schedulers, None if machine is None else machine.cpus
    )
    if builder.failed or machine is None or diagnostics:
        return None
    return Plan(source_name, machine, tuple(processes), schedulers=schedulers, events=tuple(events))


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"; did you mean {quote(close[0])}?" if close else ""
