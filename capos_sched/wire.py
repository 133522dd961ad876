"""What the client library and the daemon share, and nothing else: the schema,
addresses, the inherited-socket environment, error codes and the parsing of
remote errors, and the text of closed grants.

The client imports this module (never ``capos_sched.rpc``); the daemon's RPC
layer imports it too, so both sides read and write the same wire text.
"""

from __future__ import annotations

import enum
import functools
import os
import tempfile
from pathlib import Path
from typing import Any

import attrs

from capos_sched.paths import CAPOS_SCHEMA

# ------------------------------------------------------------------ schema


def schema_path() -> Path:
    """Where ``capos.capnp`` lives (the package's ``schema/``)."""
    if not CAPOS_SCHEMA.is_file():
        raise FileNotFoundError(f"capos.capnp not found at {CAPOS_SCHEMA}")
    return CAPOS_SCHEMA


@functools.cache
def capos() -> Any:
    """The loaded schema module (``capos().SchedulingPolicyCap`` ...)."""
    import capnp

    return capnp.load(str(schema_path()))


# ------------------------------------------------------------ schema enums


class LatencyClass(enum.Enum):
    """The schema's ``LatencyClass`` as the client sees it: values are the schema's
    ordinals, ``wire_name`` its spelling. The core has its own enum with the same
    ordinals (tests/rpc/test_client_imports.py checks they agree); the client never
    imports the core."""

    INTERACTIVE = 0
    NORMAL = 1
    BATCH = 2
    IPC_SERVER = 3

    @property
    def wire_name(self) -> str:
        """The schema / manifest spelling (``ipcServer``, ``interactive`` ...)."""
        return _CLASS_WIRE_NAMES[self.value]

    @classmethod
    def parse(cls, value: object) -> LatencyClass:
        """A member from itself, its ordinal, its wire name, or any enum member with
        the same ``wire_name`` (the core's); ValueError naming the accepted set otherwise."""
        if isinstance(value, LatencyClass):
            return value
        name = getattr(value, "wire_name", value)
        if isinstance(name, int) and not isinstance(name, bool) and 0 <= name < len(cls):
            return cls(name)
        if isinstance(name, str) and name in _CLASS_WIRE_NAMES:
            return cls(_CLASS_WIRE_NAMES.index(name))
        accepted = ", ".join(_CLASS_WIRE_NAMES)
        raise ValueError(f"unknown latency class {value!r}; expected one of {accepted}")


_CLASS_WIRE_NAMES = ("interactive", "normal", "batch", "ipcServer")


class ThreadState(enum.Enum):
    """The schema's ``ThreadState`` ordinals (the client's copy, as LatencyClass)."""

    RUNNABLE = 0
    RUNNING = 1
    BLOCKED = 2
    EXITED = 3


# ---------------------------------------------------------- exec'd processes

FD_ENV = "CAPOS_SCHED_FD"
"""Set by the daemon for a process it starts: the fd of its CapSet's socket."""
PROCESS_ENV = "CAPOS_SCHED_PROCESS"
"""Set by the daemon for a process it starts: its process name in the manifest."""

# ---------------------------------------------------------------- addresses


class AddressError(ValueError):
    """An address that does not parse; the message says what was expected."""


@attrs.frozen
class Address:
    """A parsed address. Invariant: ``kind == "unix"`` iff ``path`` is set."""

    kind: str
    path: str | None = None
    host: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


def parse_address(text: str) -> Address:
    """``unix:PATH`` or ``tcp:HOST:PORT`` (IPv6 hosts in brackets)."""
    kind, sep, rest = text.partition(":")
    if not sep or kind not in ("unix", "tcp"):
        raise AddressError(f"address {text!r}: expected unix:PATH or tcp:HOST:PORT")
    if kind == "unix":
        if not rest:
            raise AddressError(f"address {text!r}: empty socket path")
        if "\x00" in rest:
            raise AddressError(f"address {text!r}: NUL in socket path")
        return Address("unix", path=rest)
    host, sep, port_text = rest.rpartition(":")
    if not sep or not host:
        raise AddressError(f"address {text!r}: expected tcp:HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise AddressError(f"address {text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise AddressError(f"address {text!r}: port {port} outside [0, 65535]")
    return Address("tcp", host=host, port=port)


def run_dir() -> Path:
    """Where the default sockets live: ``$CAPOS_SCHED_RUN_DIR``, else
    ``$XDG_RUNTIME_DIR/capos-sched``, else ``/tmp/capos-sched-<uid>``."""
    explicit = os.environ.get("CAPOS_SCHED_RUN_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "capos-sched"
    return Path(tempfile.gettempdir()) / f"capos-sched-{os.getuid()}"


def default_listen() -> str:
    return f"unix:{run_dir() / 'listen.sock'}"


def default_admin() -> str:
    return f"unix:{run_dir() / 'admin.sock'}"


# ---------------------------------------------------------- CPU delegation

CPU_CAPS: tuple[str, ...] = ("enqImmed", "enq", "preempt")
"""The schema's CpuCap enumerants, in ordinal order (each implies the ones before)."""
CPU_NOTE_KINDS: tuple[str, ...] = ("capsUpdated", "effectiveCapsUpdated", "idle")
"""The CpuListener methods, as the kinds of the notifications they carry."""

# ------------------------------------------------------------------- errors

CODES: tuple[str, ...] = (
    "failed",
    "overloaded",
    "disconnected",
    "unimplemented",
    "invalidArgument",
)
"""The schema's ExceptionType enumerants, in ordinal order. Every error text a
client receives starts with one of them and a colon."""

KJ_TYPES = {
    "FAILED": "failed",
    "OVERLOADED": "overloaded",
    "DISCONNECTED": "disconnected",
    "UNIMPLEMENTED": "unimplemented",
}
"""Errors the C++ layer raises by itself carry their code as the KJ type."""

_TRANSPORT_PREFIXES = ("remote exception: ", "message = ")

LATCH_KINDS: tuple[str, ...] = ("revoked", "stale")
"""Why a grant closed; a closed grant's calls fail ``disconnected: <kind>: <reason>``."""


def latch_text(kind: str, reason: str) -> str:
    """The message (after ``disconnected: ``) of a call on a closed grant."""
    if kind not in LATCH_KINDS:
        raise ValueError(f"latch kind {kind!r}: expected one of {', '.join(LATCH_KINDS)}")
    return f"{kind}: {reason}"


def latch_kind(message: str) -> str | None:
    """The latch kind a ``disconnected`` message names, if any (``latch_text`` undone)."""
    head, sep, _ = message.partition(":")
    return head if sep and head in LATCH_KINDS else None


@attrs.frozen
class RemoteError:
    """A parsed remote error: its code and the message after the code."""

    code: str
    message: str


def parse_remote(description: str, kj_type: str | None = None) -> RemoteError:
    """Parse a KJ exception description as received by a client.

    The code is the text before the first colon once KJ's prefixes
    (``remote exception: ``, ``message = ``) are gone, when it is one of
    CODES; otherwise the KJ type decides and the whole text is the message.
    """
    text = description.strip()
    changed = True
    while changed:
        changed = False
        for prefix in _TRANSPORT_PREFIXES:
            if text.startswith(prefix):
                text = text[len(prefix) :]
                changed = True
    head, sep, rest = text.partition(":")
    if sep and head in CODES:
        return RemoteError(head, rest.strip())
    return RemoteError(KJ_TYPES.get(kj_type or "", "failed"), text)
