"""Suite-wide set-up: the structured log at warning level, as the CLI default.

Without it, structlog's default configuration prints debug lines from daemons
run inside the test process into pytest's progress output.
"""

from capos_sched.logs import configure_logging

configure_logging("warning")
