"""Top-level commands that belong to no single layer: the demo and the bench group."""

from __future__ import annotations

import click


@click.group(
    epilog="""\b
Examples:
  capos-sched bench dispatch --threads 100000 --json
  capos-sched bench manifest --json
  capos-sched bench sim --quick --json
  capos-sched bench rpc --json
  capos-sched bench matrix --runs 5 --write-docs
"""
)
def bench() -> None:
    """Benchmarks. Each prints JSON with --json and measures its baseline in the same run."""
