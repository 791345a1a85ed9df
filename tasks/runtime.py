"""Helpers for code that runs inside or outside a Prefect run."""

from __future__ import annotations

import logging

from prefect import get_run_logger
from prefect.exceptions import MissingContextError

from models.errors import LoraflowError

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


def logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a flow or task run, a plain logger elsewhere (e.g. task.fn)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("loraflow")
