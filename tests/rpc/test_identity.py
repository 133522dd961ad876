"""Handle identity cannot be forged, and both ways of identifying a handle
give the same answer.

A handle passed back on its own connection is recognised directly (fast
path); any other is asked to ``prove(nonce)`` (an HMAC under a per-grant
secret that never leaves the daemon). So a relayed handle of another process
is refused exactly as it is on its own connection, a relayed handle of the
policy's own process works, and a handle of another daemon running the same
manifest proves nothing.
"""

from __future__ import annotations

from pathlib import Path

from capos_sched.client import InvalidArgument, connect

from .conftest import Daemon, arun
from .test_daemon import expect, weight_of


def test_relayed_handles_get_the_answer_they_get_on_their_own_connection(
    daemon: Daemon,
) -> None:
    async def go() -> None:
        async with (
            await connect(daemon.listen, token=daemon.token("tuner")) as tuner,
            await connect(daemon.listen, token=daemon.token("tuner")) as tuner2,
            await connect(daemon.listen, token=daemon.token("viewer")) as viewer,
        ):
            policy = await tuner.policy()
            # viewer holds a grant on fairness/a, tuner holds another one: viewer's
            # handle is still not tuner's, relayed or not
            viewer_a = await viewer.thread("a")
            err = await expect(InvalidArgument, policy.set_weight(viewer_a, 5))
            assert "not one granted to process tuner" in err.message
            # tuner's own handle from another connection (relayed): accepted
            own_a = await tuner2.thread("a")
            await policy.set_weight(own_a, 3100)
            # and on its own connection (fast path): the same answers
            await policy.set_weight(await tuner.thread("a"), 3200)
        assert await weight_of(daemon.admin, "fairness/a") == 3200

    arun(go)


def test_a_handle_of_another_daemon_running_the_same_manifest_is_refused(
    daemon: Daemon, tmp_path: Path
) -> None:
    other_dir = Path(str(daemon.dir) + "-b")
    other_dir.mkdir()
    twin = Daemon(other_dir)
    try:

        async def go() -> None:
            async with (
                await connect(daemon.listen, token=daemon.token("tuner")) as here,
                await connect(twin.listen, token=twin.token("tuner")) as there,
            ):
                foreign_a = await there.thread("a")
                assert (await foreign_a.describe()).thread_id == (
                    await (await here.thread("a")).describe()
                ).thread_id  # the same (tid, generation): describe() cannot tell
                err = await expect(InvalidArgument, (await here.policy()).set_weight(foreign_a, 9))
                assert "not one granted to process tuner" in err.message
            assert await weight_of(daemon.admin, "fairness/a") == 2048

        arun(go)
    finally:
        twin.stop()
        import shutil

        shutil.rmtree(other_dir, ignore_errors=True)
