"""The first moments of a process a manifest runs with ``exec`` (child side).

The daemon starts ``python -I -m capos_sched.rpc.exec_shim --parent PID
[--user NAME] -- PROGRAM ARGS...`` with the process's allow-listed
environment, its CapSet socket inherited, and its working directory. Before
``execvp(PROGRAM)`` (same pid, so the daemon's view of the process does not
change) it:

1. drops every capability (bounding and ambient sets) and sets no_new_privs,
   so the program holds none even when the daemon runs as root, and cannot
   gain one through a setuid binary; without CAP_SYS_PTRACE it cannot read
   the daemon's ``/proc`` entries (the daemon is not dumpable);
2. with ``--user``, switches to that user and its primary group (no
   supplementary groups);
3. asks for SIGKILL when the daemon dies (after the user switch, which would
   clear it), and exits if the daemon is already gone.

Standard library only; any failure is one line on stderr and exit 127.
"""

from __future__ import annotations

import argparse
import os
import pwd
import sys

from capos_sched.procguard import drop_all_capabilities, set_parent_death_signal


def switch_user(name: str) -> None:
    entry = pwd.getpwnam(name)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    if os.getuid() != entry.pw_uid or os.geteuid() != entry.pw_uid:
        raise OSError(f"still uid {os.geteuid()} after switching to {name}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="capos-sched-exec")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--user", default=None)
    parser.add_argument("program", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    program = args.program[1:] if args.program[:1] == ["--"] else args.program
    if not program:
        parser.error("no program to run")
    try:
        if not drop_all_capabilities():
            raise OSError("cannot drop capabilities")
        if args.user is not None:
            switch_user(args.user)
        set_parent_death_signal(args.parent)
        os.execvp(program[0], program)
    except (OSError, KeyError) as exc:
        print(f"capos-sched exec {program[0]}: {exc}", file=sys.stderr, flush=True)
        os._exit(127)


if __name__ == "__main__":
    main()
