"""The ``capos-sched`` command: one click group, one sub-command per job.

Sub-commands live beside the layer they drive (``capos_sched/*/commands.py``)
and are registered here, so this file stays a table of contents.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from capos_sched.logs import LOG_FORMATS, LOG_LEVELS, configure_logging

MAIN_EPILOG = """\b
Examples:
  capos-sched run                                    # the demo: the default manifest
  capos-sched check manifests/*.cue
  capos-sched simulate manifests/ipc-pairs.cue --json
  capos-sched serve manifests/system-thread-fairness.cue --grants-dir /tmp/grants
  capos-sched --log-format json --log-file daemon.log serve manifests/tuner.cue

\b
Environment:
  CAPOS_SCHED_DISABLE_WFQ=1  run, simulate and serve use the FIFO policy
                             whatever the manifest or --policy says.
  CAPOS_SCHED_RUN_DIR        where the default sockets live (listen.sock,
                             admin.sock); unset: $XDG_RUNTIME_DIR/capos-sched,
                             or /tmp/capos-sched-<uid> without XDG_RUNTIME_DIR.
  CAPOS_SCHED_FD             set by serve for the processes it starts (their
                             capability socket); set-weight, set-class and
                             snapshot use it when no --token-file is given.

\b
Exit status: 0 on success; 1 on an error (a message on stderr: a manifest
problem, a daemon error, an unreachable daemon); 2 on a usage error. run
exits 130 / 143 when stopped by SIGINT / SIGTERM (after its report); serve
exits 0 on either.
"""


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=MAIN_EPILOG,
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS),
    default=None,
    help="Minimum level of the structured log. "
    "[default: info for serve, warning for every other command]",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="auto",
    show_default=True,
    help="Log rendering: console (aligned text), json (one object per line), or auto "
    "(console on a terminal, json otherwise).",
)
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Append the log to this file instead of stderr.  [default: stderr]",
)
@click.version_option(package_name="capos-sched")
@click.pass_context
def main(ctx: click.Context, log_level: str | None, log_format: str, log_file: Path | None) -> None:
    """capos-sched: a capability-secured weighted-fair scheduler service.

    Threads declared in CUE-style manifests run on simulated CPUs under the
    capOS Phase D weighted-fair policy; scheduling authority is handed out only
    as Cap'n Proto capabilities.
    """
    _tolerate_narrow_encodings()
    if log_level is None and ctx.invoked_subcommand == "serve":
        log_level = "info"  # a daemon says where it listens and what it does
    stream = None
    if log_file is not None:
        try:
            stream = ctx.with_resource(
                open(log_file, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - ctx closes it
            )
        except OSError as error:
            raise click.BadParameter(
                f"cannot open {log_file}: {error.strerror or error}", param_hint="--log-file"
            ) from None
    configure_logging(log_level or "warning", log_format, stream)


def _tolerate_narrow_encodings() -> None:
    """On a stream that cannot encode Unicode (PYTHONIOENCODING=ascii, LANG=C on
    old systems) print what it can and a ``?`` for the rest: never a
    UnicodeEncodeError. JSON reports are ASCII already (escaped)."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if not encoding.startswith("utf") and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")


def _register() -> None:
    from bench.dispatch import dispatch
    from bench.manifest_check import manifest
    from bench.matrix import matrix
    from bench.sim import sim
    from bench.slice import slice_bench
    from capos_sched.commands import bench
    from capos_sched.manifest.commands import check, export
    from capos_sched.rpc.bench import rpc
    from capos_sched.rpc.commands import COMMANDS as RPC_COMMANDS
    from capos_sched.rpc.policy_commands import policy
    from capos_sched.runtime.commands import run, simulate

    main.add_command(bench)
    bench.add_command(dispatch)
    bench.add_command(manifest)
    bench.add_command(sim)
    main.add_command(check)
    main.add_command(export)
    for command in RPC_COMMANDS:
        main.add_command(command)
    bench.add_command(rpc)
    main.add_command(policy)
    main.add_command(run)
    main.add_command(simulate)
    bench.add_command(matrix)
    bench.add_command(slice_bench)


_register()
