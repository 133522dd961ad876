"""Top-level commands that belong to no single layer: the demo and the bench group."""

from __future__ import annotations

import click


@click.group()
def bench() -> None:
    """Benchmarks. Each prints JSON with --json and measures its baseline in the same run."""
