"""The operator's side of CPU delegation: Admin.cpuDelegation (the root node),
Admin.schedulers, and ``capos-sched cpus show|grant|revoke|kill``, against the
in-process daemon with the fake delegation core (see test_delegation.py)."""

from __future__ import annotations

from typing import Any

from capos_sched import client as cl

from .conftest import InProcess, arun, assert_no_traceback

# ------------------------------------------------------------ the operator


def test_the_operators_root_node_and_scheduler_stats(deleg: InProcess) -> None:
    async def main() -> None:
        async with await cl.connect_admin(deleg.admin) as admin:
            root = await admin.cpu_delegation()
            assert await root.grant("web", [0, 1], ["preempt"]) == []
            web = await root.child("web")
            await web.grant("api", [1], ["enq"])
            await root.kill("batch", "over budget")
            rows = {r["name"]: r for r in await admin.schedulers()}
            assert list(rows) == ["root", "web", "api", "batch"]  # live preorder, then killed
            assert rows["web"]["parent"] == "root" and rows["api"]["parent"] == "web"
            assert [h["held"] for h in rows["web"]["holdings"]] == [["preempt"], ["preempt"]]
            assert rows["web"]["holdings"][0]["effective"] == ["enqImmed", "enq", "preempt"]
            assert rows["batch"]["alive"] is False
            assert rows["batch"]["exit"] == {"kind": "parentKill", "message": "over budget"}
            assert rows["web"]["exit"] is None and rows["root"]["alive"] is True

    arun(main)


def _cpus_cli(d: InProcess, *args: str) -> Any:
    from .conftest import cli

    return cli("cpus", args[0], "--admin", d.admin, *args[1:])


def test_cpus_cli_grant_show_revoke_kill(deleg: InProcess) -> None:
    import json

    out = _cpus_cli(deleg, "grant", "web", "0-2", "enq")
    assert (out.returncode, out.stdout.strip()) == (0, "denied: -"), out.stderr
    out = _cpus_cli(deleg, "grant", "api", "2,3", "enq", "--json")  # through web: 3 denied
    assert out.returncode == 3, out.stderr
    assert json.loads(out.stdout)["denied"] == [3]
    out = _cpus_cli(deleg, "show")
    assert out.returncode == 0, out.stderr
    assert any(
        line.split()[:4] == ["web", "root", "alive", "0-2:enq"] for line in out.stdout.splitlines()
    )
    out = _cpus_cli(deleg, "revoke", "web", "2", "enqImmed", "--json")
    assert out.returncode == 0, out.stderr
    assert [h["cpu"] for h in json.loads(out.stdout)["holdings"]] == [0, 1]
    out = _cpus_cli(deleg, "kill", "web", "--reason", "drill")
    assert (out.returncode, out.stdout.strip()) == (0, "killed: web"), out.stderr
    shown = json.loads(_cpus_cli(deleg, "show", "--json").stdout)
    web = next(r for r in shown if r["name"] == "web")
    assert web["exit"] == {"kind": "parentKill", "message": "drill"}


def test_cpus_cli_errors_are_typed_without_tracebacks(deleg: InProcess) -> None:
    out = _cpus_cli(deleg, "grant", "nobody", "0", "enq")
    assert out.returncode == 1
    assert out.stderr.startswith("invalidArgument: no scheduler named 'nobody'"), out.stderr
    assert_no_traceback(out.stderr)
    out = _cpus_cli(deleg, "grant", "web", "0", "everything")
    assert out.returncode == 2 and "unknown cap" in out.stderr
    out = _cpus_cli(deleg, "grant", "web", "9", "enq")  # the daemon checks the range
    assert out.returncode == 1 and out.stderr.startswith("invalidArgument:"), out.stderr
    assert_no_traceback(out.stderr)


def test_stats_reports_every_scheduler(deleg: InProcess) -> None:
    import json

    from .conftest import cli

    assert _cpus_cli(deleg, "grant", "web", "1", "enq").returncode == 0
    out = cli("stats", "--admin", deleg.admin, "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)["schedulers"]}
    assert rows["web"]["holdings"] == [
        {"cpu": 1, "held": ["enq"], "effective": ["enqImmed", "enq"]}
    ]
    assert set(rows["web"]) >= {"rejected_inserts", "forced_admits", "evictions", "allocated_ns"}
    text = cli("stats", "--admin", deleg.admin).stdout
    assert "scheduler web: cpus 1:enq, rejected=0" in text


def test_stats_of_a_plan_without_sub_schedulers_shows_only_the_root(inproc: InProcess) -> None:
    import json

    from .conftest import cli

    out = cli("stats", "--admin", inproc.admin, "--json")
    assert out.returncode == 0, out.stderr
    (root,) = json.loads(out.stdout)["schedulers"]
    assert (root["name"], root["alive"], len(root["holdings"])) == ("root", True, 2)
    assert root["holdings"][0]["held"] == ["enqImmed", "enq", "preempt"]
    text = cli("stats", "--admin", inproc.admin).stdout
    assert "scheduler " not in text  # one line per scheduler only once there are several
