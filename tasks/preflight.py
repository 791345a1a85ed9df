"""The first stage: checks that run before anything is trained, written or pushed."""

from __future__ import annotations

from prefect import task

from models.checks import check_inputs as run_checks
from models.data import SplitReport


@task(name="check-inputs")
def check_inputs(**kwargs) -> list[SplitReport]:
    """Data splits valid, base model safe to load, target modules present (see models.checks)."""
    return run_checks(**kwargs)
