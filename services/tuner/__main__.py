"""capos-sched tuner: an example client service that steers weights through its grants.

Run by the daemon through a manifest's ``exec`` (manifests/tuner.cue: the
CapSet arrives on the inherited socket), or on its own against ``--listen``
with a token file (docker-compose.yml)::

    python services/tuner [--connect ADDR --token-file FILE] [--period 1s]
                          [--target NAME=SHARE ...] [--rounds N]

Every period it takes a snapshot of each granted thread through the
SchedulingPolicyCap, computes the CPU time each received since the last
round, and moves weights toward the target shares (tuner_policy.py). It
prints one line per change to stdout (the daemon logs it, tagged ``tuner``).
A revoked policy ends it (status 0); a lost daemon ends it with status 1.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tuner_policy import next_weights

from capos_sched.client import (
    Disconnected,
    Revoked,
    Session,
    Stale,
    connect,
    connect_inherited,
    read_token,
)


def _duration(text: str) -> float:
    units = {"ms": 1e-3, "s": 1.0}
    for unit in ("ms", "s"):
        if text.endswith(unit):
            try:
                value = float(text[: -len(unit)]) * units[unit]
            except ValueError:
                break
            if value > 0:
                return value
    raise click.BadParameter(f"{text!r} is not a duration like 500ms or 2s")


def _targets(pairs: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for pair in pairs:
        name, sep, share = pair.rpartition("=")
        try:
            value = float(share)
        except ValueError:
            value = -1.0
        if not sep or not name or value <= 0:
            raise click.BadParameter(f"{pair!r}: expected NAME=SHARE with SHARE > 0")
        out[name] = value
    return out


async def tune(
    session: Session, policy_name: str, period: float, targets: dict[str, float], rounds: int
) -> int:
    names = [n for n in await session.list() if n != policy_name]
    policy = await session.policy(policy_name)
    handles = {n: await session.thread(n) for n in names}
    print(f"tuner: holding {policy_name} and {len(handles)} threads: {' '.join(names)}", flush=True)
    last: dict[str, int] = {}
    done = 0
    while rounds == 0 or done < rounds:
        snaps = {}
        for name, handle in list(handles.items()):
            try:
                snaps[name] = await policy.snapshot(handle)
            except Stale:
                print(f"tuner: {name} is gone (stale); dropping it", flush=True)
                del handles[name]
        ran = {n: s.runtime_ns - last[n] for n, s in snaps.items() if n in last}
        last = {n: s.runtime_ns for n, s in snaps.items()}
        weights = {n: s.weight for n, s in snaps.items()}
        for name, weight in next_weights(weights, ran, targets).items():
            await policy.set_weight(handles[name], weight)
            share = ran[name] / max(1, sum(ran.values()))
            print(f"tuner: {name} share {share:.3f} weight {weights[name]} -> {weight}", flush=True)
        done += 1
        await asyncio.sleep(period)
    return 0


async def amain(
    connect_addr: str | None,
    token_file: str | None,
    policy_name: str,
    period: float,
    targets: dict[str, float],
    rounds: int,
) -> int:
    if token_file:
        session = await connect(connect_addr or "", token=read_token(token_file))
    else:
        session = await connect_inherited()
    try:
        return await tune(session, policy_name, period, targets, rounds)
    except Revoked as exc:
        print(f"tuner: {exc}; stopping", flush=True)
        return 0
    finally:
        await session.close()


@click.command()
@click.option("--connect", "connect_addr", default=None, help="The daemon's --listen address.")
@click.option("--token-file", default=None, help="Token file (else $CAPOS_SCHED_FD is used).")
@click.option("--policy", "policy_name", default="policy", show_default=True)
@click.option("--period", default="1s", show_default=True, help="Time between rounds.")
@click.option("--target", "target_pairs", multiple=True, help="NAME=SHARE (default: equal).")
@click.option("--rounds", type=click.IntRange(0), default=0, help="Stop after N rounds (0: never).")
def main(
    connect_addr: str | None,
    token_file: str | None,
    policy_name: str,
    period: str,
    target_pairs: tuple[str, ...],
    rounds: int,
) -> None:
    """Keep the granted threads' CPU shares at their targets by adjusting weights."""
    if token_file and not connect_addr:
        raise click.BadParameter("--token-file needs --connect", param_hint="--connect")
    seconds, targets = _duration(period), _targets(target_pairs)
    try:
        status = asyncio.run(amain(connect_addr, token_file, policy_name, seconds, targets, rounds))
    except Disconnected as exc:
        print(f"tuner: {exc}", file=sys.stderr, flush=True)
        status = 1
    except KeyboardInterrupt:
        status = 0
    sys.exit(status)


if __name__ == "__main__":
    main()
