"""A real MLflow tracking server on PostgreSQL, shared by the fault and promotion-race tests.

One `mlflow server` per test session (it takes ~15 s to start); each test uses its own
experiment and model names.
"""

from __future__ import annotations

import os
import uuid

import pytest

from bench.team_stack import BIN, Processes, wait_http
from tests.conftest import free_port
from tests.flows.test_team import postgres_or_skip


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory):
    """`mlflow server` on PostgreSQL (yields its port, database name and artifact root)."""
    conn = postgres_or_skip()
    database = f"loraflow_test_faults_{uuid.uuid4().hex[:8]}"
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{database}"')
    root = tmp_path_factory.mktemp("faults-mlflow")
    port = free_port()
    procs = Processes(root)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    try:
        server, log = procs.start(
            "mlflow",
            [
                str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                "--backend-store-uri", f"postgresql+psycopg2://postgres@127.0.0.1:5432/{database}",
                "--artifacts-destination", str(root / "artifacts"), "--workers", "1",
            ],
            env,
            root,
        )  # fmt: skip
        wait_http(f"http://127.0.0.1:{port}/health", server, log)
        yield {"port": port, "database": database, "artifacts": root / "artifacts"}
    finally:
        procs.stop()
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        conn.close()
