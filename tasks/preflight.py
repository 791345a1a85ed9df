"""The first stage of every flow: checks that run before anything is trained, written or pushed.

The flows call these as tasks, first; `loraflow check` calls the same functions (`task.fn`)
without a Prefect engine. Each check is in one place only: here.

Retry policy: none, for every check here (the service check included). A check answers "can this
run start?" in seconds, before anything is written: a tracking server that refuses connections,
a missing bucket or refused credentials at that moment are settings to fix, reported in one line
at once, not outages to wait out (with IO_RETRIES a mistyped MLFLOW_TRACKING_URI would be reported
after 42 s). Outages *during* a run are ridden out by the I/O tasks (IO_RETRIES, tasks.runtime);
a scheduled run that meets a server down at its start fails before writing anything, and the next
schedule (or the deployment's own retries) starts it again. The S3 request itself keeps
botocore's standard retries (tasks.lib.s3.client), as every S3 request does.
"""

from __future__ import annotations

from prefect import task

from models.checks import check_inputs as run_checks
from models.data import SplitReport
from tasks.lib import s3
from tasks.registry import VersionRef, resolve_version
from tasks.tracking import check_reachable


@task(name="check-inputs")
def check_inputs(**kwargs) -> list[SplitReport]:
    """Data splits valid, base model safe to load, target modules present (see models.checks)."""
    return run_checks(**kwargs)


@task(name="check-services")
def check_services(*, export_to: str | None = None) -> None:
    """The tracking server answers; with an export, the bucket exists and the credentials work.

    No retries (see the module docstring): checked once, failing in one line.
    """
    check_reachable()
    if export_to:
        s3.check_bucket(s3.client(), s3.parse_s3_uri(export_to))


@task(name="check-model-version")
def check_model_version(*, model_uri: str) -> VersionRef:
    """The models:/ URI names a version that exists (a registry read; nothing is downloaded)."""
    return resolve_version(model_uri, download=False)


# The names of the check tasks: what a flow runs before anything is written.
CHECK_TASKS = frozenset(t.name for t in (check_inputs, check_services, check_model_version))
