"""Where a base model lives: a local directory or a hub id.

Plain path logic, no torch: the CLI's unchanged-rerun check uses it before anything heavy loads.
"""

from __future__ import annotations

from pathlib import Path


def is_local(base_model: str) -> bool:
    """Local when it exists or is written like a path; anything else is taken as a hub id."""
    return Path(base_model).exists() or base_model.startswith(("/", ".", "~"))


def canonical_base(base_model: str) -> str:
    """Absolute path for a local base (so the registry can find it from anywhere), else the id."""
    return str(Path(base_model).expanduser().resolve()) if is_local(base_model) else base_model
