"""Benchmarks. Each prints JSON and measures its baseline in the same run.

Run them through the CLI (``capos-sched bench ...``) or as modules
(``python -m bench.dispatch``). Results are recorded in docs/benchmarks.md.
"""

import structlog as _structlog

from capos_sched.logs import configure_logging as _configure_logging

# Run as modules (``python -m bench.matrix --json``), the benchmarks would log
# through structlog's default, which prints to stdout before the JSON. Send the
# lines to stderr unless a command (the CLI, with its flags) configured them.
if not _structlog.is_configured():
    _configure_logging()
