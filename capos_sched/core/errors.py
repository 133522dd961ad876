"""Typed errors raised by the core at its boundary.

Each error carries an ``exception_type`` named after the schema's
``ExceptionType`` enumerant, so adapters (RPC, CLI) can map it without
inspecting messages. Like h11's errors, messages name the state and the input.
"""

from __future__ import annotations


class CoreError(Exception):
    """Base class of every error the core raises on purpose."""

    exception_type: str = "failed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(CoreError):
    """An argument is outside its documented domain; nothing was changed."""

    exception_type = "invalidArgument"


class StaleThread(CoreError):
    """A thread reference names an exited thread or an older generation."""

    exception_type = "disconnected"


class InvalidState(CoreError):
    """An operation does not apply in the current state (a caller bug)."""

    exception_type = "failed"


class StaleScheduler(CoreError):
    """A scheduler node that was killed (its subtree torn down)."""

    exception_type = "disconnected"
