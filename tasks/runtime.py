"""Helpers for code that runs inside or outside a Prefect run."""

from __future__ import annotations

import logging

from prefect import get_run_logger
from prefect.exceptions import MissingContextError

from models.config.run import LoraflowConfig
from models.errors import LoraflowError

# Seconds before each retry of an I/O task. Each MLflow request is already retried by MLflow
# itself (MLFLOW_HTTP_REQUEST_MAX_RETRIES, default 7 with backoff, ~4 minutes) and each S3 request
# by botocore, so a task retry starts only after those gave up: these cover outages of minutes.
RETRY_DELAYS = [2, 10, 30]


def retry_transient(task, task_run, state) -> bool:
    """Retry I/O failures unless the error says retrying cannot help (e.g. missing bucket)."""
    error = state.result(raise_on_failure=False)
    return not isinstance(error, LoraflowError) or error.retryable


# For every I/O task: a few retries with growing delays, skipped for permanent errors.
IO_RETRIES = {
    "retries": len(RETRY_DELAYS),
    "retry_delay_seconds": RETRY_DELAYS,
    "retry_condition_fn": retry_transient,
}


def in_prefect_run() -> bool:
    """Whether this code runs inside a Prefect flow or task run (where artifacts can be made)."""
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def config_parameter() -> LoraflowConfig:
    """The running flow's config, from its `config` parameter or its `config_file` and
    `overrides` (models.config.file.run_config), as a LoraflowConfig (for flow-run names)."""
    from prefect.runtime import flow_run

    return config_of(flow_run.parameters)


def config_of(parameters: dict) -> LoraflowConfig:
    """The run config a flow run's parameters name (see config_parameter)."""
    from models.config.file import run_config

    config = parameters.get("config")
    if isinstance(config, dict):
        config = LoraflowConfig.model_validate(config)
    return run_config(config, parameters.get("config_file"), parameters.get("overrides"))


def logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a flow or task run, a plain logger elsewhere (e.g. task.fn)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("loraflow")


def adapter_kept(error: BaseException, adapter_dir: str, adapter_sha256: str) -> Exception | None:
    """When a run fails after training: log where the adapter is kept and, for loraflow's own
    errors, return the same error with that location added to its one-line message."""
    from pathlib import Path

    kept = f"the trained adapter is kept at {Path(adapter_dir).resolve()}"
    kept += f" (sha256 {adapter_sha256[:12]})" if adapter_sha256 else ""
    logger().error("run failed after training; %s", kept)
    if not isinstance(error, LoraflowError):
        return None
    again = type(error)(f"{error}; {kept}")
    again.retryable = error.retryable
    return again
