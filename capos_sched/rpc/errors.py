"""Typed errors on the wire: ``<ExceptionType>: <message>``, never a traceback.

pycapnp sends every server exception as Cap'n Proto type FAILED, with a text
built by ``traceback.format_exception(type(exc), exc, exc.__traceback__)``. A
``WireError`` is built so that this text is exactly ``code: message``:

- its class is named after the code (``invalidArgument``) and claims the
  ``builtins`` module, so no module path is printed before the name;
- ``__traceback__``, ``__cause__`` and ``__suppress_context__`` read as None,
  None and True whatever the interpreter stores, so no frame and no chained
  exception is ever formatted.

The client sees the description ``remote exception: message = <code>: <text>``
(the two prefixes are added by KJ); ``parse_remote`` undoes that. Errors the
C++ layer raises by itself (a call on an interface the object does not
implement, a connection that dropped) carry no code in their text but a KJ type
(UNIMPLEMENTED, DISCONNECTED ...), which ``parse_remote`` maps instead.
"""

from __future__ import annotations

import secrets
import traceback
from typing import ClassVar

import structlog

from capos_sched.core import CoreError
from capos_sched.wire import CODES, RemoteError, latch_text, parse_remote

__all__ = ["CODES", "RemoteError", "WireError", "parse_remote", "wire_error"]

log = structlog.get_logger("capos_sched.rpc")

MAX_MESSAGE = 4000
"""Messages are cut to this many characters (manifest diagnostics can be long)."""


class WireError(Exception):
    """An error meant for a client; subclasses are named after their code.

    Invariant: ``str(exc) == exc.message``; formatting the exception with the
    traceback module yields exactly ``f"{exc.code}: {exc.message}\\n"``.
    """

    code: ClassVar[str] = "failed"

    def __init__(self, message: str) -> None:
        message = message.replace("\x00", "")
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 3] + "..."
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    @property
    def wire_text(self) -> str:
        return f"{self.code}: {self.message}"

    # Hide everything the traceback module would print besides "code: message".
    @property  # type: ignore[override]
    def __traceback__(self) -> None:
        return None

    @__traceback__.setter
    def __traceback__(self, _value: object) -> None:
        pass

    @property  # type: ignore[override]
    def __cause__(self) -> None:
        return None

    @__cause__.setter
    def __cause__(self, _value: object) -> None:
        pass

    @property  # type: ignore[override]
    def __suppress_context__(self) -> bool:
        return True

    @__suppress_context__.setter
    def __suppress_context__(self, _value: object) -> None:
        pass


def _make(code: str) -> type[WireError]:
    cls = type(code, (WireError,), {"code": code, "__module__": "builtins", "__qualname__": code})
    return cls


ERROR_CLASSES: dict[str, type[WireError]] = {code: _make(code) for code in CODES}


def wire_error(code: str, message: str) -> WireError:
    """A WireError of ``code`` (one of CODES)."""
    return ERROR_CLASSES[code](message)


def revoked(what: str) -> WireError:
    return wire_error("disconnected", latch_text("revoked", what))


def stale(what: str) -> WireError:
    return wire_error("disconnected", latch_text("stale", what))


def from_core(exc: CoreError) -> WireError:
    """Map a core error by its ``exception_type``; stale threads say ``stale``."""
    code = exc.exception_type if exc.exception_type in ERROR_CLASSES else "failed"
    if code == "disconnected":
        return stale(exc.message)
    if code == "failed":
        # InvalidState and friends are caller bugs inside the daemon, not client
        # input: the client gets a ref, the log gets the details under that ref.
        ref = new_ref()
        log.error("internal error: the core refused an operation", ref=ref, error=repr(exc))
        return internal_error(ref)
    return wire_error(code, exc.message)


_TRACEBACK = BaseException.__dict__["__traceback__"]
_CONTEXT = BaseException.__dict__["__context__"]
_CAUSE = BaseException.__dict__["__cause__"]


def scrub(exc: BaseException | None) -> None:
    """Drop every frame ``exc`` (and the exceptions chained to it) keeps alive.

    A traceback holds its frames and each frame its locals (RPC coroutines
    hold pycapnp objects); a traceback reaching back to the frame that caught
    its exception is a reference cycle, which only the garbage collector
    frees, on whatever thread it happens to run. Clearing the frames and
    the chain here frees those objects now, in the thread that owns them.
    ``WireError`` hides these attributes, so the slots are read and written
    through BaseException's own descriptors.
    """
    seen: set[int] = set()
    todo = [exc]
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        tb = _TRACEBACK.__get__(item)
        if tb is not None:
            traceback.clear_frames(tb)
            _TRACEBACK.__set__(item, None)
        todo += [_CAUSE.__get__(item), _CONTEXT.__get__(item)]
        _CAUSE.__set__(item, None)
        _CONTEXT.__set__(item, None)


def new_ref() -> str:
    """A short random id that ties a client's ``failed`` answer to a log entry."""
    return secrets.token_hex(6)


def internal_error(ref: str | None = None) -> WireError:
    return wire_error("failed", f"internal error (ref {ref or new_ref()})")
