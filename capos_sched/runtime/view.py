"""Tables for people: the live view during ``run`` and the final table.

Shares are in CPUs (runtime / elapsed: 1.000 is one whole CPU). The ideal is
the water-filled share (``core.ideal_shares``) among the CPU-bound threads
still running (spin, hash), which is what a weighted-fair scheduler owes
always-runnable threads; threads that block (sleepers, IPC) have no ideal and
show latencies instead.

The error compares a thread's share with its fair part of the CPU time the
CPU-bound threads actually received (their ideals scaled down to it), so the
time nobody could run (start-up, dispatch overhead between slices, the CPU time
of sleepers and IPC threads) does not count as unfairness: one thread alone
shows 0%, whatever the overhead. ``fair_error`` computes it.
"""

from __future__ import annotations

import sys
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from capos_sched.core import ideal_shares

CPU_BOUND = ("spin", "hash")


def _ms(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1e6:.1f}"


def _us(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1e3:.0f}"


def ideal_by_name(report: dict[str, Any]) -> dict[str, float]:
    """Water-filled ideal shares (CPUs) of the CPU-bound threads that did not end."""
    bound = [
        t
        for t in report["threads"]
        if t.get("workload") in CPU_BOUND
        and t.get("finished_ns") is None
        and not t.get("failed")
        and not t.get("removed")
    ]
    shares = ideal_shares([t["weight"] for t in bound], report["cpus"])
    return {t["name"]: s for t, s in zip(bound, shares, strict=True)}


def fair_error(report: dict[str, Any]) -> dict[str, float]:
    """Relative error of each CPU-bound thread's runtime against its fair part of
    the runtime the CPU-bound threads received together (see the module doc)."""
    ideals = ideal_by_name(report)
    runtimes = {t["name"]: t["runtime_ns"] for t in report["threads"] if t["name"] in ideals}
    received, owed = sum(runtimes.values()), sum(ideals.values())
    if received <= 0 or owed <= 0:
        return {}
    return {
        name: (runtime / received) / (ideals[name] / owed) - 1.0
        for name, runtime in runtimes.items()
        if ideals[name] > 0
    }


def cpu_bound_cpus(report: dict[str, Any]) -> float:
    """The CPUs the CPU-bound threads with an ideal received together."""
    ideals = ideal_by_name(report)
    runtime = sum(t["runtime_ns"] for t in report["threads"] if t["name"] in ideals)
    return runtime / max(1, report["elapsed_ns"])


def legend(report: dict[str, Any], *, full: bool) -> str:
    """What the share, ideal and error columns mean (the table's caption)."""
    text = "share: CPUs used (runtime / elapsed; 1.000 = one CPU). ideal: the weighted-fair share"
    text += f" of the {report['cpus']} CPU{'s' if report['cpus'] != 1 else ''}."
    if full and ideal_by_name(report):
        text += (
            " error: share against its fair part of the"
            f" {cpu_bound_cpus(report):.3f} CPUs the CPU-bound threads received"
            " (start-up and dispatch overhead are not unfairness)."
        )
    return text


FULL_WIDTH = 150
"""Consoles at least this wide get every column; narrower ones a compact table."""


def report_table(
    report: dict[str, Any], *, title: str | None = None, width: int = FULL_WIDTH
) -> Table:
    """The final per-thread table of a run (or simulation) report."""
    elapsed = max(1, report["elapsed_ns"])
    ideals = ideal_by_name(report)
    errors = fair_error(report)
    full = width >= FULL_WIDTH
    table = Table(
        title=title,
        title_justify="left",
        caption=legend(report, full=full),
        caption_justify="left",
        header_style="bold",
        box=box.HEAVY_HEAD if full else box.SIMPLE_HEAD,
        pad_edge=full,
        show_edge=full,
    )
    with_class = width >= 100
    columns = [("thread", "left")]
    columns += [("class", "left")] if with_class else []
    columns += [("weight", "right")]
    columns += [("runtime ms", "right"), ("share", "right"), ("ideal", "right")]
    if full:
        columns += [("error", "right"), ("switch", "right"), ("preempt", "right")]
        columns += [("block", "right"), ("migr", "right")]
        columns += [("wake p50/p99 us", "right"), ("rtt p50/p99 us", "right"), ("end", "left")]
    else:
        columns += [("wake p99", "right"), ("rtt p99", "right"), ("end", "left")]
    for column, justify in columns:
        table.add_column(column, justify=justify, no_wrap=column != "end")  # type: ignore[arg-type]
    for t in report["threads"]:
        share = t["runtime_ns"] / elapsed
        ideal = ideals.get(t["name"])
        error = "-" if t["name"] not in errors else f"{errors[t['name']] * 100:+.1f}%"
        wake, rtt = t.get("wake_latency_ns"), t.get("ipc_round_trip_ns")
        if t.get("failed"):
            end = Text("failed", style="red")
        elif t.get("finished_ns") is not None:
            end = Text(f"done {t['finished_ns'] / 1e6:.0f} ms" if full else "done")
        else:
            end = Text("")
        cells = [t["name"], *([t["class"]] if with_class else [])]
        cells += [str(t["weight"]), _ms(t["runtime_ns"]), f"{share:.3f}"]
        cells.append("-" if ideal is None else f"{ideal:.3f}")
        if full:
            cells += [error, str(t["context_switches"]), str(t["preemptions"])]
            cells += [str(t["voluntary_blocks"]), str(t["migrations"])]
            cells.append("-" if not wake else f"{_us(wake['p50'])}/{_us(wake['p99'])}")
            cells.append("-" if not rtt else f"{_us(rtt['p50'])}/{_us(rtt['p99'])}")
        else:
            cells.append("-" if not wake else f"{_us(wake['p99'])} us")
            cells.append("-" if not rtt else f"{_us(rtt['p99'])} us")
        table.add_row(*cells, end)
    return table


def _cpu_ranges(cpus: list[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``1-3,5``."""
    parts: list[str] = []
    for cpu in sorted(cpus):
        if parts and "-" not in parts[-1].split(",")[-1] and int(parts[-1]) == cpu - 1:
            parts[-1] = f"{cpu - 1}-{cpu}"
        elif parts and "-" in parts[-1] and int(parts[-1].split("-")[1]) == cpu - 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{cpu}"
        else:
            parts.append(str(cpu))
    return ",".join(parts)


def holdings_text(holdings: list[dict[str, Any]]) -> str:
    """A scheduler's CPUs by their strongest literal cap: ``enq 1-2 enqImmed 3``."""
    by_cap: dict[str, list[int]] = {}
    for h in holdings:
        held = h["held"]
        if held:
            strongest = next(c for c in ("preempt", "enq", "enqImmed") if c in held)
            by_cap.setdefault(strongest, []).append(h["cpu"])
    order = ("preempt", "enq", "enqImmed")
    return " ".join(f"{cap} {_cpu_ranges(by_cap[cap])}" for cap in order if cap in by_cap) or "-"


def scheduler_table(report: dict[str, Any]) -> Table | None:
    """One row per scheduler (reports with sub-schedulers only): its literal
    holdings, CPU time allocated (in all, and per CPU), the enforcement
    counters and the exit record of a killed one."""
    rows = report.get("schedulers") or []
    if not rows:
        return None
    table = Table(
        title="schedulers", title_justify="left", header_style="bold", box=box.SIMPLE_HEAD
    )
    columns = ["scheduler", "parent", "weight", "holds", "allocated ms", "per CPU ms"]
    columns += ["rejected", "forced", "kicks denied", "preempts denied", "evicted", "exit"]
    for column in columns:
        left = column in ("scheduler", "parent", "holds", "per CPU ms", "exit")
        table.add_column(column, justify="left" if left else "right", no_wrap=column != "exit")
    for row in rows:
        allocated = {int(k): v for k, v in row["allocated_ns"].items()}
        per_cpu = " ".join(f"{cpu}:{ns / 1e6:.0f}" for cpu, ns in sorted(allocated.items()))
        exit_record = row.get("exit")
        exit_text = (
            ""
            if exit_record is None
            else f"{exit_record['kind']} by {exit_record['parent']}: {exit_record['message']}"
        )
        table.add_row(
            row["name"],
            row.get("parent") or (exit_record or {}).get("parent") or "-",
            "-" if row.get("weight") is None else str(row["weight"]),
            holdings_text(row.get("holdings") or []) if row.get("alive", True) else "(killed)",
            _ms(sum(allocated.values())),
            per_cpu or "-",
            str(row["rejected_inserts"]),
            str(row["forced_admits"]),
            str(row["denied_kicks"]),
            str(row["denied_preempts"]),
            str(row["evictions"]),
            exit_text,
        )
    return table


def report_header(report: dict[str, Any], *, ascii_only: bool = False) -> Text:
    overhead = report.get("dispatch_overhead_ns") or {}
    parts = [
        f"{report['manifest']}",
        f"policy {report['policy']}"
        + (
            f" -> {report['policy_final']}"
            if report.get("policy_final", report["policy"]) != report["policy"]
            else ""
        ),
        f"{report['cpus']} CPU{'s' if report['cpus'] != 1 else ''}",
        f"slice {report['slice_ns'] / 1e6:g} ms",
        f"elapsed {report['elapsed_ns'] / 1e9:.3f} s",
    ]
    if overhead.get("p50") is not None:
        parts.append(
            f"dispatch overhead p50 {_us(overhead['p50'])} us p99 {_us(overhead['p99'])} us"
        )
    if report.get("virtual_time"):
        parts.append("virtual time")
    return Text((" | " if ascii_only else " · ").join(parts), style="bold")


def console() -> Console:
    """A console for reports: the terminal's width, or 160 columns when piped."""
    if sys.stdout.isatty():
        return Console(soft_wrap=False)
    return Console(width=160, soft_wrap=False)


def report_view(
    report: dict[str, Any], width: int = FULL_WIDTH, *, ascii_only: bool = False
) -> Group:
    """Header, table and notes; ``ascii_only`` for terminals that cannot show more."""
    header = report_header(report, ascii_only=ascii_only)
    items: list[Any] = [header, report_table(report, width=width)]
    schedulers = scheduler_table(report)
    if schedulers is not None:
        items.append(schedulers)
    for problem in report.get("refused_events") or []:
        items.append(Text(problem, style="yellow"))
    for t in report["threads"]:
        if t.get("failed"):
            items.append(Text(f"{t['name']} failed: {t['failed']}", style="red"))
    bypass = (report.get("watchdog") or {}).get("bypass")
    if bypass:
        items.append(
            Text(
                f"watchdog bypass to FIFO at {bypass['at_ns'] / 1e9:.3f} s "
                f"({bypass['thread']} waited {bypass['waited_ns'] / 1e6:.0f} ms)",
                style="yellow",
            )
        )
    return Group(*items)


LIVE_FULL_WIDTH = 100
"""Live views at least this wide show the class and runtime columns."""


def live_table(
    rows: list[dict[str, Any]],
    elapsed_ns: int,
    duration_s: float | None,
    width: int = LIVE_FULL_WIDTH,
) -> Group:
    """The live view: progress and per-thread share against the ideal.

    Every thread takes one row: names are never cut, and the bar gets the
    width the other columns leave (narrow terminals drop class and runtime).
    """
    progress = f"{elapsed_ns / 1e9:.1f} s" + (f" / {duration_s:g} s" if duration_s else "")
    full = width >= LIVE_FULL_WIDTH
    columns = ["thread", *(["class"] if full else []), "weight", "state"]
    columns += [*(["runtime ms"] if full else []), "share", "ideal"]
    cells = [
        [
            row["name"],
            *([row["class"]] if full else []),
            str(row["weight"]),
            row["state"],
            *([_ms(row["runtime_ns"])] if full else []),
            f"{row['share']:.3f}",
            "-" if row["ideal"] is None else f"{row['ideal']:.3f}",
        ]
        for row in rows
    ]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    # per column one space of padding each side and a one-character rule between
    # columns; the compact box has neither outer edges nor outer padding
    n = len(columns) + 1  # with the bar
    separators = 3 * n + 1 if full else 3 * n - 3
    bar_width = max(5, min(30, width - sum(widths) - separators))
    table = Table(
        header_style="bold",
        box=box.HEAVY_HEAD if full else box.SIMPLE_HEAD,
        pad_edge=full,
        show_edge=full,
    )
    for column, column_width in zip(columns, widths, strict=True):
        justify = "left" if column in ("thread", "class", "state") else "right"
        table.add_column(column, justify=justify, no_wrap=True, min_width=column_width)  # type: ignore[arg-type]
    table.add_column("bar", justify="left", no_wrap=True, width=bar_width)
    for row, row_cells in zip(rows, cells, strict=True):
        table.add_row(*row_cells, Text(_bar(row["share"], row["ideal"], bar_width), style="green"))
    return Group(Text(f"running {progress}", style="bold"), table)


def _bar(share: float, ideal: float | None, width: int) -> str:
    """``#`` for the share of one CPU, ``|`` where the ideal is."""
    bar = ["#" if i < round(min(1.0, share) * width) else " " for i in range(width)]
    if ideal is not None:
        bar[min(width - 1, round(min(1.0, ideal) * width))] = "|"
    return "".join(bar).rstrip()
