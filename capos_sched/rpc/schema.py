"""The compiled ``schema/capos.capnp``: defined in ``capos_sched.wire`` (shared with the client)."""

from capos_sched.wire import capos, schema_path

__all__ = ["capos", "schema_path"]
