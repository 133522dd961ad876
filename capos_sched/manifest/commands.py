"""``capos-sched check`` and ``capos-sched export``: the manifest commands."""

from __future__ import annotations

import json
import os

import click

from .errors import ManifestError
from .loader import load_plan, load_plan_text, read_manifest
from .plan import Plan
from .render import json_text, to_cue


def plan_or_exit(path: str | os.PathLike[str]) -> Plan:
    """The plan of the manifest file at ``path``. Any problem (no such file, a
    directory, not UTF-8, not valid) is printed as ``check`` prints it, and the
    command exits 1: every command taking a manifest file behaves the same."""
    try:
        return load_plan(path)
    except ManifestError as error:
        click.echo(str(error), err=True)
        raise SystemExit(1) from None


def source_or_exit(path: str | os.PathLike[str]) -> str:
    """The text of the manifest file at ``path``, checked here first as
    ``plan_or_exit`` does (for commands that send the text elsewhere)."""
    try:
        text = read_manifest(path)
        load_plan_text(text, os.fspath(path))
    except ManifestError as error:
        click.echo(str(error), err=True)
        raise SystemExit(1) from None
    return text


def _summary(plan: Plan) -> str:
    threads = len(plan.threads())
    processes = len(plan.processes)
    machine = plan.machine
    return (
        f"{processes} process{'es' if processes != 1 else ''}, "
        f"{threads} thread{'s' if threads != 1 else ''}, "
        f"{machine.cpus} CPU{'s' if machine.cpus != 1 else ''}, policy {machine.policy}"
    )


CHECK_EPILOG = """\b
Examples:
  capos-sched check manifests/*.cue
  capos-sched check --json my.cue | jq '.files[] | select(.ok | not)'

\b
Exit status: 0 when every file is valid; 1 when any is not (or cannot be
read); 2 on a usage error.
"""

EXPORT_EPILOG = """\b
Examples:
  capos-sched export manifests/system-thread-fairness.cue
  capos-sched export manifests/default.cue --json

\b
Exit status: 0 on success; 1 when the manifest is invalid or cannot be read;
2 on a usage error.
"""


@click.command(epilog=CHECK_EPILOG)
@click.argument("manifests", nargs=-1, required=True, metavar="MANIFEST...")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print one JSON document instead: {"files": [{"file", "ok", "errors": '
    '[{"line", "col", "message"}]}]} (line and col are 0 for whole-file problems).',
)
def check(manifests: tuple[str, ...], as_json: bool) -> None:
    """Check manifests against the schema and the model's rules.

    Prints one "OK" line per valid file on stdout. Every problem in every
    file goes to stderr as "file:line:col: message", followed by the source
    line and a caret under the column. Exits 0 when all files are valid,
    1 otherwise.
    """
    files = []
    for path in manifests:
        try:
            plan = load_plan(path)
        except ManifestError as error:
            files.append({"file": path, "ok": False, "errors": error.diagnostics})
            if not as_json:
                click.echo(str(error), err=True)
        else:
            files.append({"file": path, "ok": True, "errors": ()})
            if not as_json:
                click.echo(f"{path}: OK ({_summary(plan)})")
    if as_json:
        for entry in files:
            entry["errors"] = [
                {"line": d.line, "col": d.col, "message": d.message} for d in entry["errors"]
            ]
        click.echo(json.dumps({"files": files}, indent=2))
    if not all(entry["ok"] for entry in files):
        raise SystemExit(1)


@click.command(epilog=EXPORT_EPILOG)
@click.argument("manifest", metavar="MANIFEST")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON: the data `cue export` gives for the schema and the manifest.",
)
def export(manifest: str, as_json: bool) -> None:
    """Print MANIFEST as evaluated: defaults filled in, checked.

    The output is what capos-sched will run: the manifest unified with the
    schema (schema/manifest.cue), with every default chosen (weights, classes,
    policy, slice ...) and definitions left out. Durations are printed as
    written ("4ms" stays "4ms").

    Without --json the output is CUE text, itself a valid manifest (package
    capos). An invalid manifest prints its problems on stderr and exits 1.
    """
    plan = plan_or_exit(manifest)
    if as_json:
        click.echo(export_json_text(plan))
    else:
        click.echo(to_cue(plan.to_json()), nl=False)


def export_json_text(plan: Plan) -> str:
    """What ``export --json`` prints for ``plan``: the data ``cue export`` gives,
    numbers exact."""
    return json_text(plan.to_json())
