"""``capos-sched run``, ``capos-sched simulate`` and ``capos-sched bench matrix``."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click
import structlog

from capos_sched.core.constants import MAX_CPUS

log = structlog.get_logger("capos_sched.runtime")

DEFAULT_DURATION_S = 5.0
"""Run length when the manifest has only threads that never end by themselves."""
DISABLE_WFQ_ENV = "CAPOS_SCHED_DISABLE_WFQ"
EXIT_ON_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _load(manifest: Path | None) -> tuple[Any, str]:
    """The plan and its display name; a manifest problem exits 1 with its diagnostics."""
    from capos_sched.manifest import DEFAULT_MANIFEST
    from capos_sched.manifest.commands import plan_or_exit

    plan = plan_or_exit(manifest if manifest is not None else DEFAULT_MANIFEST)
    name = str(manifest) if manifest is not None else f"{DEFAULT_MANIFEST.name} (default)"
    return plan, name


def effective_policy(explicit: str | None, plan: Any) -> str:
    """``--policy``, the plan's policy, and CAPOS_SCHED_DISABLE_WFQ=1 (which forces FIFO).

    A policy file is loaded once here to check it: a bad one is a usage error
    (exit 2) for ``--policy``, a manifest error (exit 1) for ``machine.policy``.
    """
    from capos_sched.policy_files import PolicyLoadError, resolve_policy

    policy = explicit or plan.machine.policy
    if os.environ.get(DISABLE_WFQ_ENV, "") not in ("", "0"):
        if policy != "fifo":
            log.warning(f"{DISABLE_WFQ_ENV} is set: forcing the FIFO policy", was=policy)
        policy = "fifo"
    try:
        resolve_policy(policy)
    except PolicyLoadError as error:
        if explicit is not None and policy == explicit:
            raise click.BadParameter(str(error), param_hint="--policy") from None
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    return policy


POLICY_HELP = (
    "Override the manifest's policy: wfq, fifo, eevdf, or a policy file PATH.py "
    f"(a module exposing POLICY; see docs/policies.md). {DISABLE_WFQ_ENV}=1 forces fifo.  "
    "[default: the manifest's machine.policy]"
)


def _has_finite(plan: Any) -> bool:
    from capos_sched.workload import is_finite

    return any(is_finite(t.workload) for t in plan.threads())


manifest_argument = click.argument(
    "manifest", required=False, type=click.Path(dir_okay=True, path_type=Path)
)
cpus_option = click.option(
    "--cpus",
    type=click.IntRange(1, MAX_CPUS),
    help="Override the manifest's CPU count.  [default: the manifest's machine.cpus]",
)
policy_option = click.option("--policy", metavar="wfq|fifo|eevdf|PATH.py", help=POLICY_HELP)
progress_option = click.option(
    "--progress",
    "progress_mode",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="A progress line on stderr (virtual time, events/s, ETA): auto shows it when "
    "stderr is a terminal. stdout (the report, or --json) is never touched.",
)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON report on stdout (no table)."
)

trace_option = click.option(
    "--trace",
    "trace_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a Chrome/Perfetto trace (JSON trace events) to this file when the run "
    "ends; open it in ui.perfetto.dev.  [default: no trace]",
)
watchdog_option = click.option(
    "--watchdog-ms",
    type=click.FloatRange(min=0, min_open=True),
    help="Stall threshold of the watchdog: a runnable thread that waits this long is "
    "reported; the FIFO bypass happens after three times as long.  [default: 250 slices]",
)


def trace_recorder(trace_path: Path | None, cpus: int) -> Any:
    """A TraceRecorder when --trace was given, after checking that the file can be
    written (a usage error now rather than a lost trace at the end)."""
    from capos_sched.runtime.trace import TraceRecorder

    if trace_path is None:
        return None
    try:
        trace_path.open("a").close()
    except OSError as error:
        raise click.BadParameter(
            f"cannot write {trace_path}: {error.strerror or error}", param_hint="--trace"
        ) from None
    return TraceRecorder(cpus)


def write_trace(trace: Any, trace_path: Path | None, *, say: bool) -> None:
    """Write the trace (if any); a failure is one error line and exit status 1."""
    if trace is None or trace_path is None:
        return
    try:
        trace.write(trace_path)
    except OSError as error:
        click.echo(
            f"error: cannot write the trace to {trace_path}: {error.strerror or error}", err=True
        )
        sys.exit(1)
    if say:
        click.echo(f"trace written to {trace_path} (open it in ui.perfetto.dev)")


def watchdog_ns(watchdog_ms: float | None) -> int | None:
    return None if watchdog_ms is None else int(watchdog_ms * 1e6)


RUN_EPILOG = f"""\b
Examples:
  capos-sched run                                   # the embedded default manifest
  capos-sched run manifests/system-thread-fairness.cue --cpus 2 --duration 3 --json
  capos-sched run manifests/thread-fairness-interactive.cue --trace out.trace.json
  {DISABLE_WFQ_ENV}=1 capos-sched run         # FIFO instead of WFQ

\b
Exit status: 0 when the run ended (--duration, or every finite thread done);
1 on a manifest or runtime error; 2 on a usage error; 130 / 143 when stopped
by SIGINT / SIGTERM (the report is still printed).
"""

SIMULATE_EPILOG = f"""\b
Examples:
  capos-sched simulate                              # the embedded default manifest
  capos-sched simulate manifests/ipc-pairs.cue --seed 1 --json
  capos-sched simulate manifests/thread-scale.cue --cpus 1 --jitter 0
  capos-sched simulate big.cue --duration 60 --json > report.json   # progress on stderr
  {DISABLE_WFQ_ENV}=1 capos-sched simulate    # FIFO instead of WFQ

\b
Exit status: 0 on success; 1 on a manifest error; 2 on a usage error.
"""


@click.command(epilog=RUN_EPILOG)
@manifest_argument
@cpus_option
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds to run.  [default: until every finite thread finished, or "
    f"{DEFAULT_DURATION_S:g} s when no thread ends by itself]",
)
@policy_option
@json_option
@trace_option
@click.option(
    "--nice",
    type=click.IntRange(-20, 19),
    default=10,
    show_default=True,
    help="Niceness added to the worker processes (the daemon stays responsive).",
)
@watchdog_option
@click.option(
    "--no-wake-preemption",
    is_flag=True,
    help="Do not cut running slices short for waking interactive threads "
    "(wake-up preemption is on by default).",
)
def run(
    manifest: Path | None,
    cpus: int | None,
    duration: float | None,
    policy: str | None,
    as_json: bool,
    trace_path: Path | None,
    nice: int,
    watchdog_ms: float | None,
    no_wake_preemption: bool,
) -> None:
    """Run MANIFEST's threads on real time (default: the embedded default manifest).

    Each simulated CPU drives one worker process; the core is charged the time
    the workers measure. Runs until --duration passes or every finite thread
    finished. Ctrl-C or SIGTERM stops cleanly (the report is still printed;
    exit status 130 / 143).
    """
    import trio

    from capos_sched.runtime.runtime import Runtime, RuntimeConfig, RuntimeFailure

    plan, name = _load(manifest)
    chosen_policy = effective_policy(policy, plan)
    if duration is None and not _has_finite(plan):
        duration = DEFAULT_DURATION_S
    trace = trace_recorder(trace_path, cpus or plan.machine.cpus)
    config = RuntimeConfig(
        nice=nice,
        wake_preemption=not no_wake_preemption,
        watchdog_threshold_ns=watchdog_ns(watchdog_ms),
    )
    runtime = Runtime(plan, chosen_policy, cpus, config=config, trace=trace, manifest_name=name)
    live = not as_json and sys.stdout.isatty()
    received: list[int] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_signals, runtime, received)
            if live:
                nursery.start_soon(_live_view, runtime, duration)
            await runtime.run(duration_s=duration)
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    except* RuntimeFailure as group:  # arrives wrapped by the nurseries it crossed
        failures = _leaves(group)
        click.echo(f"error: {'; '.join(str(e) for e in failures)}", err=True)
        sys.exit(1)
    report = runtime.report()
    if as_json:
        click.echo(json.dumps(report))
    else:
        from capos_sched.runtime.view import console, report_view

        out = console()
        out.print(report_view(report, out.width, ascii_only=out.options.ascii_only))
    # The report is out first: a trace that cannot be written loses only itself.
    write_trace(trace, trace_path, say=not as_json)
    if received:
        sys.exit(EXIT_ON_SIGNAL.get(signal.Signals(received[0]), 1))


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    """The exceptions of a (possibly nested) exception group, flattened."""
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves


async def _signals(runtime: Any, received: list[int]) -> None:
    import trio

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            received.append(signum)
            log.info("stopping", signal=signal.Signals(signum).name)
            runtime.request_stop(signal.Signals(signum).name)


async def _live_view(runtime: Any, duration: float | None) -> None:
    import trio
    from rich.console import Console
    from rich.live import Live

    from capos_sched.runtime.view import live_table

    console = Console()
    with Live(console=console, auto_refresh=False, transient=True) as live:
        while True:
            if runtime.running:
                rows, elapsed = runtime.share_rows(), runtime.elapsed_ns()
                live.update(live_table(rows, elapsed, duration, console.width), refresh=True)
            await trio.sleep(0.25)


@click.command(epilog=SIMULATE_EPILOG)
@manifest_argument
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    help="Virtual seconds.  [default: until every finite thread finished (at most one "
    f"virtual hour), or {DEFAULT_DURATION_S:g} s when no thread ends by itself]",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the run-length jitter."
)
@click.option(
    "--jitter",
    type=click.FloatRange(0, 0.5),
    default=None,
    help="Relative jitter of modelled run lengths (0 = the exact model).  [default: 0.02]",
)
@cpus_option
@policy_option
@json_option
@progress_option
def simulate(
    manifest: Path | None,
    duration: float | None,
    seed: int,
    jitter: float | None,
    cpus: int | None,
    policy: str | None,
    as_json: bool,
    progress_mode: str,
) -> None:
    """Simulate MANIFEST on the core's deterministic simulator (virtual time).

    The report has the shape of `capos-sched run --json`; the same
    (manifest, options, seed) always gives the same report.
    """
    from capos_sched.runtime.simulate import DEFAULT_JITTER, simulate_plan

    plan, name = _load(manifest)
    if duration is None:
        duration = 3600.0 if _has_finite(plan) else DEFAULT_DURATION_S
    from capos_sched.runtime.progress import sim_progress

    chosen_policy = effective_policy(policy, plan)
    with sim_progress(progress_mode, f"simulate {Path(name).name}") as progress:
        report = simulate_plan(
            plan,
            duration_ns=int(duration * 1e9),
            seed=seed,
            cpus=cpus,
            policy=chosen_policy,
            jitter=DEFAULT_JITTER if jitter is None else jitter,
            manifest_name=name,
            progress=progress,
        )
    if as_json:
        click.echo(json.dumps(report))
        return
    from capos_sched.runtime.view import console, report_view

    out = console()
    out.print(report_view(report, out.width, ascii_only=out.options.ascii_only))
