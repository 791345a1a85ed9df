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
from models.config.run import ConfigError
from models.config.specs import CheckSpec
from models.data.splits import SplitReport
from models.registry.promotion import METRIC_DIRECTIONS, recorded_key
from tasks.check_stage import CHECK_INPUTS, CHECK_MODEL_VERSION, CHECK_PROMOTION, CHECK_SERVICES
from tasks.lib import s3
from tasks.registry import (
    CHALLENGER,
    RegistryError,
    VersionRef,
    resolve_version,
    valid_model_name,
)
from tasks.tracking import check_model_permission, check_reachable


# log_prints off, as on tasks.evaluate.evaluate: loading the lm-eval tasks prints dill's
# disassembly, which belongs to dill, not to the run's log.
@task(name=CHECK_INPUTS, log_prints=False)
def check_inputs(spec: CheckSpec) -> list[SplitReport]:
    """Data splits valid, base model safe to load, target modules present (see models.checks)."""
    return run_checks(spec)


@task(name=CHECK_SERVICES)
def check_services(*, export_to: str | None = None) -> None:
    """The tracking server answers; with an export, the bucket exists and the credentials work.

    No retries (see the module docstring): checked once, failing in one line.
    """
    check_reachable()
    if export_to:
        s3.check_bucket(s3.client(), s3.parse_s3_uri(export_to))


@task(name=CHECK_MODEL_VERSION)
def check_model_version(*, model_uri: str) -> VersionRef:
    """The models:/ URI names a version that exists (a registry read; nothing is downloaded)."""
    return resolve_version(model_uri, download=False)


@task(name=CHECK_PROMOTION)
def check_promotion(*, model_name: str, version: str | None, metric: str) -> VersionRef:
    """The promote flow's first stage: a valid model name and metric, a tracking server that
    answers, a version that exists (default: the one behind alias `challenger`) and recorded the
    metric, and a user allowed to move its aliases (EDIT, where the server has its auth app).
    Returns that version (registry only, nothing downloaded)."""
    # Named as `loraflow promote` spells it: where a name is typed by hand (the pipeline's
    # comes from registry.model_name, checked with the config).
    valid_model_name(model_name, where="--model")
    if metric not in METRIC_DIRECTIONS:
        raise ConfigError(f"metric: must be one of {sorted(METRIC_DIRECTIONS)}, got {metric!r}")
    check_reachable()
    target = f"models:/{model_name}/{version}" if version else f"models:/{model_name}@{CHALLENGER}"
    ref = resolve_version(target, download=False)
    if ref.recorded(metric) is None:
        raise RegistryError(
            f"models:/{model_name}/{ref.version}: its run recorded no {recorded_key(metric)}"
        )
    check_model_permission(
        model_name=model_name, needs="EDIT", action=f"change aliases of '{model_name}'"
    )
    return ref
