"""Helpers for code that runs inside or outside a Prefect run."""

from __future__ import annotations

import logging

from prefect import get_run_logger
from prefect.exceptions import MissingContextError


def logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a flow or task run, a plain logger elsewhere (e.g. task.fn)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("loraflow")
