"""What Prefect prints on the console while a command runs a flow whose first stage is checks.

A refused input is reported in one line, printed by the CLI. The console records of a flow run
that stopped in its check stage (server started, flow run begun, the check failed with its
traceback, the flow failed) would only bury that line. So until the flow is past its checks,
Prefect's console records are held: they are printed, in order, as soon as the run is past them
or the flow returns, and dropped when the flow stops at a check with a loraflow error. Only the
console is affected: Prefect's API log (the dashboard) keeps every record.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
from collections.abc import Iterator

from models.errors import LoraflowError
from tasks.preflight import CHECK_TASKS


def past_checks(record: logging.LogRecord) -> bool:
    """Whether a record shows the run is past its check stage: a later task speaks, or the
    flow itself warns (e.g. about a split) outside a failure report."""
    task = getattr(record, "task_name", None)
    if task is not None:
        return task not in CHECK_TASKS
    return (
        hasattr(record, "flow_run_name")
        and record.levelno >= logging.WARNING
        and record.exc_info is None
        and not record.getMessage().startswith("Finished in state")
    )


class HoldUntilChecked(logging.Filter):
    """On a console handler: holds records until the run is past its checks."""

    def __init__(self, handler: logging.Handler):
        super().__init__()
        self.handler = handler
        self.held: list[logging.LogRecord] | None = []

    def filter(self, record: logging.LogRecord) -> bool:
        if self.held is None:
            return True
        if past_checks(record):
            self.release()
            return True
        self.held.append(record)
        return False

    def release(self) -> None:
        held, self.held = self.held or [], None
        for record in held:
            self.handler.handle(record)


@contextlib.contextmanager
def checks_first() -> Iterator[None]:
    """Around a flow call from the CLI: a run refused by its checks prints nothing of its own."""
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()
    holds = [
        HoldUntilChecked(h)
        for h in logging.getLogger().handlers
        if isinstance(h, PrefectConsoleHandler)
    ]
    for hold in holds:
        hold.handler.addFilter(hold)
    refused = False
    try:
        yield
    except LoraflowError:
        refused = all(hold.held is not None for hold in holds)
        if refused:
            # A temporary Prefect server started for this run says at exit that it stops; exit
            # handlers run last-registered first, so this one silences that line.
            atexit.register(logging.disable, logging.CRITICAL)
            # The failed run's event (tasks.events) may still be queued when the process exits:
            # Prefect's events worker sends it at exit, before atexit handlers run, and warns
            # that it is "still processing items" while it does. It still reports errors.
            logging.getLogger("EventsWorker").setLevel(logging.ERROR)
        raise
    finally:
        for hold in holds:
            hold.handler.removeFilter(hold)
            if not refused:
                hold.release()
