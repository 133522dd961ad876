"""Where the project's shared files live: the ABI schema and the manifests.

They are kept at the top of the repository (``schema/``, ``manifests/``) and
reached from the package through ``capos_sched/_data/``, whose two entries are
symbolic links to them. An editable install therefore reads the checkout's own
files, and a wheel (``pip install .``) ships real copies as package data (see
``[tool.setuptools.package-data]`` in pyproject.toml), so every module finds
them here, installed either way, rather than counting parent folders itself.
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "_data"
# resolved, so that messages name the checkout's files rather than the links
SCHEMA_DIR = (DATA_DIR / "schema").resolve()
MANIFESTS_DIR = (DATA_DIR / "manifests").resolve()

CAPOS_SCHEMA = SCHEMA_DIR / "capos.capnp"
MANIFEST_SCHEMA = SCHEMA_DIR / "manifest.cue"
DEFAULT_MANIFEST = MANIFESTS_DIR / "default.cue"
