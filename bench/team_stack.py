"""The team stack on loopback, authentication on, as docs/team.md sets it up without Docker.

PostgreSQL (127.0.0.1:5432, trust auth) holds three fresh databases per stack: Prefect's, MLflow's
tracking store and MLflow's auth store, so stacks (a test module, the soak) never share state.
The Prefect server needs an API auth string; `mlflow server --app-name basic-auth` gets its admin
from the environment and its users from infra/mlflow_access.py; work pools and their concurrency
limits come from infra/pools.sh; `prefect deploy --all` reads the repository's prefect.yaml.
Used by tests/flows/test_team.py and bench/soak.py (`make soak`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
# The accounts of infra/mlflow-users.example.yaml: the workers', a release manager, a reader.
PIPELINE, RELEASE_MANAGER, READER, ADMIN = "svc-loraflow", "alice", "bob", "admin"
ROLES = {PIPELINE: "pipeline", RELEASE_MANAGER: "release-manager", READER: "reader"}


class NoPostgres(RuntimeError):
    """No PostgreSQL answers at 127.0.0.1:5432."""


def postgres():
    """An autocommit connection to the `postgres` database, or NoPostgres saying why not."""
    import psycopg2

    try:
        conn = psycopg2.connect(dbname="postgres", connect_timeout=3, **PG)
    except psycopg2.OperationalError as e:
        first = str(e).strip().splitlines()[0]
        raise NoPostgres(f"no PostgreSQL at 127.0.0.1:5432 ({first})") from None
    conn.autocommit = True
    return conn


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


class Processes:
    """Background processes, each in its own session (a worker ignores SIGTERM otherwise)."""

    def __init__(self, logs: Path):
        self.logs, self.procs = logs, []

    def start(self, name: str, cmd: list[str], env: dict, cwd: Path) -> tuple:
        log = self.logs / f"{name}.log"
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdout=log.open("a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc, log

    def stop(self, only: subprocess.Popen | None = None):
        """Stop every process (or `only` one) with its whole session: `mlflow server` serves
        from child processes that would otherwise keep its port."""
        chosen = [only] if only else list(reversed(self.procs))
        for proc in chosen:
            self._signal(proc, signal.SIGTERM)
        for proc in chosen:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._signal(proc, signal.SIGKILL)
                proc.wait(timeout=20)
            self.procs.remove(proc)

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass


def deploy_code(project: Path) -> Path:
    """The code a deployment runs, copied from this checkout into `project`: flows/, tasks/,
    models/, configs/, prefect.yaml and its deploy steps (loraflow_deploy.py)."""
    for part in ("flows", "tasks", "models", "configs"):
        shutil.copytree(REPO / part, project / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("prefect.yaml", "loraflow_deploy.py"):
        shutil.copy(REPO / name, project / name)
    return project


def cli(cmd: list[str], env: dict, cwd: Path, timeout: float = 600) -> str:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


@dataclass
class TeamStack:
    """A running stack. `env` is the pipeline's (workers, operators); `as_user` another's."""

    root: Path
    project: Path
    models: list[str]
    pool_limits: dict[str, int]
    passwords: dict[str, str] = field(default_factory=dict)
    databases: dict[str, str] = field(default_factory=dict)
    worker_env: dict[str, dict] = field(default_factory=dict)  # extra variables, per pool
    ui: bool = False  # serve the Prefect UI at the API's origin (browser tests)
    env: dict = field(default_factory=dict)
    workers: dict = field(default_factory=dict)
    deployed: str = ""

    def __post_init__(self):
        self.procs = Processes(self.root)
        self.prefect_port, self.mlflow_port = free_port(), free_port()
        self.mlflow_uri = f"http://127.0.0.1:{self.mlflow_port}"
        self.prefect_api = f"http://127.0.0.1:{self.prefect_port}/api"
        self.secrets = self.root / "secrets"  # passwords live here only (not scanned)
        self.passwords = {name: f"pw-{secrets.token_hex(12)}" for name in (ADMIN, *ROLES)}
        self.auth_string = f"loraflow:{secrets.token_hex(16)}"

    def as_user(self, user: str | None) -> dict:
        """The pipeline's environment with another MLflow user (None: no credentials at all)."""
        env = {**self.env}
        env.pop("MLFLOW_TRACKING_USERNAME", None)
        env.pop("MLFLOW_TRACKING_PASSWORD", None)
        if user:
            env["MLFLOW_TRACKING_USERNAME"] = user
            env["MLFLOW_TRACKING_PASSWORD"] = self.passwords[user]
        return env

    def start(self) -> TeamStack:
        self._create_databases()
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(self.root / "prefect-home"),
            "PREFECT_API_URL": self.prefect_api,
            "PREFECT_API_AUTH_STRING": self.auth_string,
            "PREFECT_UI_ENABLED": "true" if self.ui else "false",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_LOGGING_LEVEL": "INFO",
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "MLFLOW_TRACKING_USERNAME": PIPELINE,
            "MLFLOW_TRACKING_PASSWORD": self.passwords[PIPELINE],
        }
        # Deployed as a new user would: workers run the deploying checkout (loraflow_deploy.py).
        for name in ("MLFLOW_REGISTRY_URI", "LORAFLOW_HOME", "LORAFLOW_REPOSITORY"):
            self.env.pop(name, None)
        server_env = {
            **self.env,
            "PREFECT_SERVER_API_AUTH_STRING": self.auth_string,
            "PREFECT_API_DATABASE_CONNECTION_URL": self._pg("prefect", "asyncpg"),
        }
        server, log = self.procs.start(
            "prefect-server",
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
             "--port", str(self.prefect_port)],
            server_env,
            self.root,
        )  # fmt: skip
        self.start_mlflow()
        wait_http(f"{self.prefect_api}/health", server, log)
        admin = {**self.as_user(ADMIN)}
        accounts = [{"name": n, "password": self.passwords[n], "role": r} for n, r in ROLES.items()]
        users = {"experiments": ["loraflow"], "models": self.models, "users": accounts}
        self.secrets.mkdir(mode=0o700)
        (self.secrets / "mlflow-users.yaml").write_text(yaml.safe_dump(users))
        cli([sys.executable, str(REPO / "infra" / "mlflow_access.py"),
             str(self.secrets / "mlflow-users.yaml")], admin, self.root)  # fmt: skip
        limits = {f"LORAFLOW_{p.upper()}_POOL_LIMIT": str(n) for p, n in self.pool_limits.items()}
        path = {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # its `prefect`
        cli(["sh", str(REPO / "infra" / "pools.sh")], {**self.env, **limits, **path}, self.project)
        self.deployed = cli([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"],
                            self.env, self.project)  # fmt: skip
        # One worker per pool here, so its own limit equals the pool's: the pool's limit alone
        # is checked when the server hands out runs, and a worker polling again before its
        # last run is marked PENDING can be handed a second one (the soak saw two trainings).
        for pool in ("gpu", "cpu"):
            limit = str(self.pool_limits[pool])
            self.workers[pool], _ = self.procs.start(
                f"worker-{pool}",
                [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process",
                 "--limit", limit],
                {**self.env, **self.worker_env.get(pool, {})},
                self.project,
            )  # fmt: skip
        return self

    def start_mlflow(self) -> None:
        """`mlflow server --app-name basic-auth` (again, after stop_mlflow: same port and data)."""
        ini = self.root / "basic_auth.ini"
        # auth_cache_ttl_seconds: without it every request runs a PBKDF2 check of the password,
        # seconds per request on a loaded CPU (a registration makes dozens of requests).
        ini.write_text(
            f"[mlflow]\ndefault_permission = READ\ndatabase_uri = {self._pg('auth')}\n"
            "auth_cache_ttl_seconds = 60\n"
        )
        env = {
            **self.env,
            "MLFLOW_AUTH_CONFIG_PATH": str(ini),
            "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN,
            "MLFLOW_AUTH_ADMIN_PASSWORD": self.passwords[ADMIN],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        self.mlflow, log = self.procs.start(
            "mlflow",
            [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
             "--port", str(self.mlflow_port), "--backend-store-uri", self._pg("mlflow"),
             "--artifacts-destination", str(self.root / "mlflow-artifacts"), "--workers", "1"],
            env,
            self.root,
        )  # fmt: skip
        wait_http(f"{self.mlflow_uri}/health", self.mlflow, log)

    def stop_mlflow(self) -> None:
        self.procs.stop(self.mlflow)

    def stop(self) -> None:
        self.procs.stop()
        if self.databases:
            conn = postgres()
            with conn.cursor() as cur:
                for name in self.databases.values():
                    cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.close()

    def _create_databases(self) -> None:
        conn = postgres()
        tag = uuid.uuid4().hex[:8]
        with conn.cursor() as cur:
            for kind in ("prefect", "mlflow", "auth"):
                self.databases[kind] = f"loraflow_test_{kind}_{tag}"
                cur.execute(f'CREATE DATABASE "{self.databases[kind]}"')
        conn.close()

    def _pg(self, kind: str, driver: str = "psycopg2") -> str:
        return f"postgresql+{driver}://postgres@127.0.0.1:5432/{self.databases[kind]}"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
