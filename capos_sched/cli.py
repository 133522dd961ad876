"""The ``capos-sched`` command: one click group, one sub-command per job.

Sub-commands live beside the layer they drive (``capos_sched/*/commands.py``)
and are registered here, so this file stays a table of contents.
"""

from __future__ import annotations

import sys

import click

from capos_sched.logs import configure_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default=None,
    help="Minimum level of the structured log (written to stderr). "
    "[default: info for serve, warning for every other command]",
)
@click.version_option(package_name="capos-sched")
@click.pass_context
def main(ctx: click.Context, log_level: str | None) -> None:
    """capos-sched: a capability-secured weighted-fair scheduler service.

    Threads declared in CUE-style manifests run on simulated CPUs under the
    capOS Phase D weighted-fair policy; scheduling authority is handed out only
    as Cap'n Proto capabilities.
    """
    _tolerate_narrow_encodings()
    if log_level is None and ctx.invoked_subcommand == "serve":
        log_level = "info"  # a daemon says where it listens and what it does
    configure_logging(log_level or "warning")


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
    from capos_sched.commands import bench
    from capos_sched.manifest.commands import check, export
    from capos_sched.rpc.bench import rpc
    from capos_sched.rpc.commands import COMMANDS as RPC_COMMANDS
    from capos_sched.runtime.commands import run, simulate

    main.add_command(bench)
    bench.add_command(dispatch)
    bench.add_command(manifest)
    main.add_command(check)
    main.add_command(export)
    for command in RPC_COMMANDS:
        main.add_command(command)
    bench.add_command(rpc)
    main.add_command(run)
    main.add_command(simulate)
    bench.add_command(matrix)


_register()
