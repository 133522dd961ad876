"""Benchmarks. Each prints JSON and measures its baseline in the same run.

Run them through the CLI (``capos-sched bench ...``) or as modules
(``python -m bench.dispatch``). Results are recorded in docs/benchmarks.md.
"""
