"""The first stage: checks that run before anything is trained, written or pushed."""

from __future__ import annotations

from prefect import task

from models.checks import check_inputs as run_checks
from models.data import SplitReport
from models.specs import CheckSpec
from tasks.lib import s3
from tasks.runtime import IO_RETRIES
from tasks.tracking import check_reachable


@task(name="check-inputs")
def check_inputs(spec: CheckSpec) -> list[SplitReport]:
    """Data splits valid, base model safe to load, target modules present (see models.checks)."""
    return run_checks(spec)


@task(name="check-services", **IO_RETRIES)
def check_services(*, export_to: str | None = None) -> None:
    """The tracking server answers; with an export, the bucket exists and the credentials work."""
    check_reachable()
    if export_to:
        s3.check_bucket(s3.client(), s3.parse_s3_uri(export_to))
