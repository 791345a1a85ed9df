"""The environment every loraflow process and the tools it starts run with.

Telemetry that would try the network (and block or fail offline) stays off unless the user
explicitly turned it on: the CLI, the benchmark workers, the tests and the dvc subprocesses all
apply this one table (the Makefile exports the same for `make` targets).
"""

from __future__ import annotations

import os

QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # The embedded Prefect API starts in a subprocess; on a busy 2-core machine it can take
    # longer than Prefect's default wait.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


def quiet_environ() -> None:
    """Apply QUIET_ENV to this process, keeping any value the user set."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
