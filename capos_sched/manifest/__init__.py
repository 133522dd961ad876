"""Manifests: a CUE-style language describing machines, processes, threads and grants.

Use :func:`load_plan` (a file) or :func:`load_plan_text` (a string); both
return an immutable :class:`Plan` or raise :class:`ManifestError`, whose
``diagnostics`` locate every problem. See docs/manifests.md for the language.
"""

from .errors import Diagnostic, ManifestError
from .loader import DEFAULT_MANIFEST, SCHEMA_PATH, load_plan, load_plan_text
from .plan import GrantPlan, MachinePlan, Plan, ProcessPlan, ThreadPlan
from .validate import parse_duration

__all__ = [
    "DEFAULT_MANIFEST",
    "SCHEMA_PATH",
    "Diagnostic",
    "GrantPlan",
    "MachinePlan",
    "ManifestError",
    "Plan",
    "ProcessPlan",
    "ThreadPlan",
    "load_plan",
    "load_plan_text",
    "parse_duration",
]
