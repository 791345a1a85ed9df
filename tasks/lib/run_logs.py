"""Prefect's run logs around an error the user can fix: one line from the CLI, not tracebacks."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from models.errors import LoraflowError

RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class _UserErrors(logging.Filter):
    """Drops run records about a LoraflowError: the record carrying it (with its traceback),
    then the "Finished in state Failed(...)" records that repeat its message."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, LoraflowError):
            self.seen.add(str(error))
            return False
        message = record.getMessage()
        return not any(seen in message for seen in self.seen)


@contextlib.contextmanager
def user_errors_in_one_line() -> Iterator[None]:
    """While a flow runs for a command line: a LoraflowError it raises is not logged by Prefect
    (traceback and failed states) as the caller prints it in one line; other errors are."""
    quiet = _UserErrors()
    loggers = [logging.getLogger(name) for name in RUN_LOGGERS]
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)
