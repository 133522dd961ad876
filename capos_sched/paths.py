"""Where the project's shared files live: the ABI schema and the manifests.

They sit at the top of the repository (``schema/``, ``manifests/``), beside the
package, and the package is installed editable (``make`` does so), so every
module finds them through here rather than counting parent folders itself.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMA_DIR = REPO_ROOT / "schema"
MANIFESTS_DIR = REPO_ROOT / "manifests"

CAPOS_SCHEMA = SCHEMA_DIR / "capos.capnp"
MANIFEST_SCHEMA = SCHEMA_DIR / "manifest.cue"
DEFAULT_MANIFEST = MANIFESTS_DIR / "default.cue"
