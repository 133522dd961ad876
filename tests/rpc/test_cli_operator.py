"""The command line as an operator and a client meet it: the snapshot after a
change, what a daemon logs about refused loads, what connecting errors say."""

from __future__ import annotations

import json

from .conftest import Daemon, cli


def _client(d: Daemon, *args: str) -> object:
    token = str(d.grants / "tuner.token")
    return cli(args[0], "--connect", d.listen, "--token-file", token, *args[1:])


def test_set_weight_and_set_class_json_print_the_snapshot_after_the_change(
    daemon: Daemon,
) -> None:
    out = _client(daemon, "set-weight", "a", "3000", "--json")
    assert out.returncode == 0, out.stderr
    after_weight = json.loads(out.stdout)
    assert after_weight["thread"] == "a"
    assert (after_weight["weight"], after_weight["class"]) == (3000, "normal")
    assert set(after_weight) == {"thread", "weight", "class", "runtime_ns", "virtual_runtime_ns"}

    out = _client(daemon, "set-class", "a", "batch", "--json")
    assert out.returncode == 0, out.stderr
    assert (json.loads(out.stdout)["weight"], json.loads(out.stdout)["class"]) == (3000, "batch")

    snapshot = _client(daemon, "snapshot", "a", "--json")
    assert set(json.loads(snapshot.stdout)) == set(after_weight)  # one shape for all three
    quiet = _client(daemon, "set-weight", "a", "1024")
    assert (quiet.returncode, quiet.stdout) == (0, "")  # without --json: nothing
