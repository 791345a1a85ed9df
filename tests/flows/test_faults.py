"""Faults against a real MLflow tracking server on PostgreSQL: outages, races, secrets.

One `mlflow server` for the module (it takes ~15 s to start). Outages are made by a TCP relay in
front of it: while "down" nothing listens on the relay's port, so every request is refused the
way it is when the server is gone, and it comes back on the same address in an instant (a real
server restart would cost the start time again). Task retry delays are shortened on the task
objects for these tests; the production delays are checked in test_production_retry_policy.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port
from tests.flows.test_team import BIN, Processes, postgres_or_skip, wait_http

SHORT_DELAYS = [0.3, 0.6, 1.2]


class Relay:
    """A TCP relay to the server that can go down (connection refused) and come back."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.port = free_port()
        self.listener: socket.socket | None = None
        self.live: list[socket.socket] = []
        self.lock = threading.Lock()

    def up(self) -> None:
        if self.listener is not None:
            return
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.close()
        with self.lock:
            for sock in self.live:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self.live.clear()

    def _accept(self, listener: socket.socket) -> None:
        while self.listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.live += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (a, b):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """`mlflow server` on PostgreSQL (yields its port and database name)."""
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


@pytest.fixture
def relay(tracking_server):
    relay = Relay(tracking_server["port"])
    relay.up()
    yield relay
    relay.down()


@pytest.fixture
def short_retries(monkeypatch):
    """Every I/O task keeps its retries and retry condition, with delays of about a second."""
    from prefect import Task

    import tasks.data
    import tasks.evaluate
    import tasks.export
    import tasks.preflight
    import tasks.registry
    import tasks.tracking
    import tasks.train

    patched = []
    for module in (tasks.data, tasks.evaluate, tasks.export, tasks.preflight, tasks.registry,
                   tasks.tracking, tasks.train):  # fmt: skip
        for obj in vars(module).values():
            if isinstance(obj, Task) and obj.retries and obj not in patched:
                monkeypatch.setattr(obj, "retry_delay_seconds", SHORT_DELAYS)
                patched.append(obj)
    assert len(patched) >= 10
    # Each MLflow request fails at once instead of MLflow's own ~4 minutes of retries.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return patched


def test_production_retry_policy():
    """I/O tasks retry 3 times after 2, 10 and 30 s; compute tasks and the checks (the service
    check included: see tasks.preflight) never retry."""
    from tasks.evaluate import evaluate, record_evaluation
    from tasks.preflight import check_inputs, check_model_version, check_services
    from tasks.registry import promote, register_adapter
    from tasks.tracking import close_run, log_metrics, open_run
    from tasks.train import train

    for io in (open_run, log_metrics, close_run, record_evaluation, register_adapter, promote):
        assert (io.retries, io.retry_delay_seconds) == (3, [2, 10, 30]), io.name
    for no_retries in (check_inputs, check_services, check_model_version, train, evaluate):
        assert not no_retries.retries, no_retries.name


# A promotion process for the race. Started early (its imports overlap the server's start), it
# says it is ready, waits for the go file (tracking URI, model, start time and its rounds), then
# runs one promotion per round at its time, each decided against the champion it was told it
# had read before: the stale view every racer in a pipeline starts from.
RACER = """
import json, os, sys, time
from pathlib import Path
from tasks.registry import promote

me, workdir = sys.argv[1], Path(sys.argv[2])
(workdir / f"ready-{me}").write_text("")
while not (workdir / "go.json").exists():
    time.sleep(0.05)
go = json.loads((workdir / "go.json").read_text())
os.environ["MLFLOW_TRACKING_URI"] = go["uri"]
out = []
for r in go["rounds"][me]:
    time.sleep(max(0.0, go["start"] + r["at"] - time.time()))
    d = promote.fn(model_name=go["name"], version=r["version"], metric="exact_match",
                   challenger_value=r["value"], champion_version=r["seen_version"],
                   champion_value=r["seen_value"], min_improvement=0.0)
    out.append({"version": r["version"], "promote": d.promote, "reason": d.reason})
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def racers(tmp_path_factory):
    """Two promotion processes, importing while the server starts; (workdir, processes)."""
    workdir = tmp_path_factory.mktemp("racers")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(key, None)
    procs = {
        me: subprocess.Popen(
            [sys.executable, "-c", RACER, me, str(workdir)],
            env=env,
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for me in ("a", "b")
    }
    yield workdir, procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_racing_promotions_leave_one_champion_and_both_decisions(
    racers, tracking_server, monkeypatch
):
    """Two processes promote versions of one model at the same time (MLflow on PostgreSQL).

    Each racer decides against the champion it read before (a stale view), as a pipeline does.
    Round 1: v2 (0.7) and, 0.3 s later, v3 (0.6) against v1 (0.5). Rounds 2 and 3 start both at
    the same instant: v4 (0.9) vs v5 (0.8) against v2, v6 (0.95) vs v7 (0.93) against v4. Without
    a guard the last writer wins whatever its figure; with it, each loser is decided again
    against the winner instead of overwriting it, and the best version ends up champion.
    """
    from mlflow import MlflowClient

    workdir, procs = racers
    uri = f"http://127.0.0.1:{tracking_server['port']}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlf = MlflowClient(uri, uri)
    name = f"race-{uuid.uuid4().hex[:6]}"
    experiment = mlf.create_experiment(name)
    mlf.create_registered_model(name)
    scores = {"1": 0.5, "2": 0.7, "3": 0.6, "4": 0.9, "5": 0.8, "6": 0.95, "7": 0.93}
    for version, score in scores.items():
        run_id = mlf.create_run(experiment).info.run_id
        mlf.log_metric(run_id, "adapter_exact_match", score)
        mv = mlf.create_model_version(name, f"runs:/{run_id}/adapter", run_id)
        assert str(mv.version) == version
    mlf.set_registered_model_alias(name, "champion", "1")

    def plan(*rounds):
        return [
            {"version": v, "value": scores[v], "at": at, "seen_version": seen,
             "seen_value": scores[seen]}
            for v, at, seen in rounds
        ]  # fmt: skip

    rounds = {
        "a": plan(("2", 0.0, "1"), ("4", 3.0, "2"), ("7", 6.0, "4")),
        "b": plan(("3", 0.3, "1"), ("5", 3.0, "2"), ("6", 6.0, "4")),
    }
    deadline = time.monotonic() + 240
    while not all((workdir / f"ready-{me}").exists() for me in procs):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs.values())
        time.sleep(0.1)
    go = {"uri": uri, "name": name, "start": time.time() + 0.5, "rounds": rounds}
    (workdir / "go.tmp").write_text(json.dumps(go))
    (workdir / "go.tmp").rename(workdir / "go.json")  # appears whole
    decided = {}
    for proc in procs.values():
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        decided.update({r["version"]: r for r in json.loads(out.strip().splitlines()[-1])})

    tags = {v: mlf.get_model_version(name, v).tags for v in decided}
    for version, t in tags.items():  # every decision is recorded, with the figure it used
        assert t["promotion.reason"] == decided[version]["reason"]
        assert decided[version]["promote"] is (t["promotion.outcome"] == "promoted")
        assert t["promotion.champion"] == f"{scores[t['promotion.champion_version']]:.6g}"
    # Whoever took the lock first, the pair's decisions are the ones made one after the other:
    # the first against the champion both had read, the second against the first's outcome.
    for better, worse, seen in (("2", "3", "1"), ("4", "5", "2"), ("6", "7", "4")):
        # Both beat the champion they had read, so whichever went first was promoted.
        first, second = (worse, better) if decided[worse]["promote"] else (better, worse)
        assert tags[first]["promotion.champion_version"] == seen
        assert "promotion.note" not in tags[first]
        assert tags[second]["promotion.champion_version"] == first
        assert tags[second]["promotion.note"] == (
            f"champion moved from v{seen} to v{first} while deciding; decided against v{first}"
        )
        assert decided[better]["promote"]  # the better one is champion after its round
        assert tags[worse]["promotion.outcome"] in ("promoted", f"kept champion v{better}")
    assert str(mlf.get_model_version_by_alias(name, "champion").version) == "6"
    assert not mlf.search_registered_models(f"name LIKE '{name}.promotion-lock%'")


def task_run_count(state) -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as prefect_client:
        return prefect_client.read_task_run(state.state_details.task_run_id).run_count


def test_io_tasks_wait_out_an_outage_and_fail_clearly_when_it_lasts(
    relay, short_retries, monkeypatch, prefect_harness
):
    from tasks.tracking import TrackingError, client, log_metrics, open_run

    uri = f"http://loraflow:pw-q7@127.0.0.1:{relay.port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    name = f"outage-{uuid.uuid4().hex[:6]}"

    import tasks.tracking

    # The server comes back 1 s after the task's first attempt began (not after the test did:
    # on a loaded machine the first attempt may start later than that).
    real_client, clock = tasks.tracking.client, threading.Event()

    def client_starting_the_clock(*args, **kwargs):
        if not clock.is_set():
            clock.set()
            threading.Timer(1.0, relay.up).start()
        return real_client(*args, **kwargs)

    monkeypatch.setattr(tasks.tracking, "client", client_starting_the_clock)
    relay.down()
    started = time.monotonic()
    state = open_run(
        experiment=name, run_name=name, config={"a": 1}, config_yaml="a: 1\n", tags={},
        return_state=True,
    )  # fmt: skip
    assert state.is_completed(), state
    assert task_run_count(state) >= 2  # refused at least once, then retried into the server
    assert time.monotonic() - started >= 1.0
    run_id = state.result()
    runs = client().search_runs([client().get_experiment_by_name(name).experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]  # refused requests created nothing
    assert runs[0].data.params == {"a": "1"}

    relay.down()  # and this time it stays down
    state = log_metrics(run_id=run_id, metrics={"x": 1.0}, return_state=True)
    assert state.is_failed() and task_run_count(state) == 1 + len(SHORT_DELAYS)
    with pytest.raises(TrackingError) as err:
        state.result()
    message = str(err.value)
    assert message.startswith(f"MLflow at http://***@127.0.0.1:{relay.port}: API request to ")
    assert "pw-q7" not in message and "\n" not in message


def tiny_run(tiny_base, model_name: str, **sections):
    from models.config import config_from_dict

    return config_from_dict(
        {
            "base_model": str(tiny_base),
            "data": {"path": "data", "max_seq_len": 64},
            "adapter": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj"]},
            "training": {"max_steps": 4, "batch_size": 4, "warmup_steps": 0, "logging_steps": 2},
            "evaluation": {"max_examples": 4, "max_new_tokens": 4},
            "registry": {"model_name": model_name, "promote_metric": "eval_loss"},
            **sections,
        }
    )


def outage_after_training(monkeypatch, relay, back_after_s: float | None):
    """The tracking server goes away right after training (and comes back, if told when)."""
    import flows.finetune

    real_train = flows.finetune.train

    def train_then_outage(**kwargs):
        result = real_train(**kwargs)
        relay.down()
        if back_after_s is not None:
            threading.Timer(back_after_s, relay.up).start()
        return result

    monkeypatch.setattr(flows.finetune, "train", train_then_outage)


def test_run_fails_clearly_and_keeps_the_adapter_when_the_server_stays_down(
    project, tiny_base, relay, short_retries, monkeypatch, prefect_harness
):
    from flows.finetune import finetune
    from models.hashing import file_sha256
    from tasks.tracking import TrackingError, client

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{relay.port}")
    name = f"down-{uuid.uuid4().hex[:6]}"
    outage_after_training(monkeypatch, relay, back_after_s=None)
    with pytest.raises(TrackingError) as err:
        finetune(tiny_run(tiny_base, name))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"MLflow at http://127.0.0.1:{relay.port}: API request to ")
    kept = message.split("; the trained adapter is kept at ")[1]
    adapter_dir, sha = kept.removesuffix(")").split(" (sha256 ")
    assert Path(adapter_dir).is_relative_to(project / ".loraflow" / "runs")
    assert file_sha256(Path(adapter_dir) / "adapter_model.safetensors").startswith(sha)
    assert (Path(adapter_dir) / "loraflow.yaml").is_file()

    relay.up()  # nothing half-registered: no version without its artifacts and tags
    assert client().search_model_versions(f"name = '{name}'") == []

    # Run again once the server is back: training resumes from the final checkpoint the failed
    # run left (nothing is trained again) and the kept adapter is what gets registered.
    import flows.finetune
    import tasks.train

    monkeypatch.setattr(flows.finetune, "train", tasks.train.train)
    again = finetune(tiny_run(tiny_base, name))
    assert again.version == "1" and again.adapter_sha256.startswith(sha)
    assert again.adapter_sha256 == file_sha256(Path(adapter_dir) / "adapter_model.safetensors")
    assert client().get_run(again.run_id).data.metrics["resumed_from_step"] == 4


def test_a_run_with_secrets_around_survives_an_outage_and_leaks_nothing(
    project, tiny_base, relay, short_retries, s3_env, tracking_server, monkeypatch, capfd,
    prefect_harness,
):  # fmt: skip
    """Fake secrets in the environment and in the tracking URI; the server goes away after
    training and comes back; then everything the run wrote is searched for them: the MLflow
    database (pg_dump) and artifact store, S3, Prefect's database, logs and result storage, the
    project directory, the console, and an error message."""
    import boto3
    import prefect.settings
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogWorker

    from flows.finetune import finetune
    from tasks.tracking import TrackingError, check_reachable

    tag = uuid.uuid4().hex[:10]
    secrets = {
        "AWS_ACCESS_KEY_ID": f"AKIAQ7{tag.upper()}",
        "AWS_SECRET_ACCESS_KEY": f"awsSecret-{tag}",
        "AWS_SESSION_TOKEN": f"awsSession-{tag}",
        "MLFLOW_TRACKING_PASSWORD": f"mlflowPw-{tag}",
        "HF_TOKEN": f"hf_{tag}",
        "DATABASE_URL": f"postgresql://svc:dbPw-{tag}@db.internal:5432/prod",
    }
    uri_password = f"uriPw-{tag}"
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "svc-loraflow")  # a name, not a secret
    monkeypatch.setenv(
        "MLFLOW_TRACKING_URI", f"http://loraflow:{uri_password}@127.0.0.1:{relay.port}"
    )
    bucket = f"secrets-{tag}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    for run_logger in ("prefect.flow_runs", "prefect.task_runs"):  # INFO too, retries included
        monkeypatch.setattr(logging.getLogger(run_logger), "level", logging.INFO)
    name = f"secrets-{tag}"
    outage_after_training(monkeypatch, relay, back_after_s=1.0)

    state = finetune(
        tiny_run(tiny_base, name, export={"enabled": True, "to": f"s3://{bucket}/exports"}),
        return_state=True,
    )
    summary = state.result()
    assert summary.promoted and summary.version == "1"
    with get_client(sync_client=True) as prefect_client:
        task_runs = prefect_client.read_task_runs()
        runs = {t.name.rsplit("-", 1)[0]: t.run_count for t in task_runs
                if t.flow_run_id == state.state_details.flow_run_id}  # fmt: skip
        assert runs["fetch-champion"] >= 2  # it was refused, retried, and got through
        APILogWorker.drain_all()
        logs = []
        while page := prefect_client.read_logs(limit=200, offset=len(logs)):
            logs += page
    assert any("http://***@127.0.0.1" in log.message for log in logs)  # retries were logged
    with pytest.raises(TrackingError) as err:  # and an error message, for good measure
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://loraflow:{uri_password}@127.0.0.1:1")
        check_reachable()

    written = [str(err.value).encode(), "\n".join(log.message for log in logs).encode()]
    written.append(
        subprocess.run(
            ["pg_dump", "-h", "127.0.0.1", "-U", "postgres", tracking_server["database"]],
            capture_output=True, check=True,
        ).stdout
    )  # fmt: skip
    s3 = boto3.client("s3")
    for obj in s3.list_objects_v2(Bucket=bucket)["Contents"]:
        written.append(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
    prefect_db = prefect.settings.PREFECT_SERVER_DATABASE_CONNECTION_URL.value()
    roots = [
        tracking_server["artifacts"],
        project,
        Path(prefect_db.split(":///", 1)[1]).parent,
        Path(os.environ["PREFECT_HOME"]),
    ]
    files = [f for root in roots for f in root.rglob("*") if f.is_file()]
    assert len(files) > 50
    written += [f.read_bytes() for f in files]
    out, errs = capfd.readouterr()
    written.append((out + errs).encode())

    needles = [*secrets.values(), uri_password, f"dbPw-{tag}"]
    needles += [
        base64.b64encode(f"loraflow:{uri_password}".encode()).decode(),
        base64.b64encode(f"svc-loraflow:{secrets['MLFLOW_TRACKING_PASSWORD']}".encode()).decode(),
    ]
    leaks = {n for n in needles for blob in written if n.encode() in blob}
    assert leaks == set()
