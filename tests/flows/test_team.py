"""The team setup for real: Prefect server + process workers + MLflow server, both on PostgreSQL.

Everything runs as separate processes on loopback, as in production: `prefect deploy --all` reads
the repository's prefect.yaml, workers pick the runs up, flows register into the MLflow server over
HTTP (artifacts proxied by it). Skipped, with the reason, only where no PostgreSQL answers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest
import yaml

from models.checkpoints import CHECKPOINT_DONE
from tests.conftest import REPO, free_port

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


def postgres_or_skip():
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        conn = psycopg2.connect(dbname="postgres", connect_timeout=3, **PG)
    except psycopg2.OperationalError as e:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432 ({str(e).strip().splitlines()[0]})")
    conn.autocommit = True
    return conn


@pytest.fixture(scope="module")
def databases():
    conn = postgres_or_skip()
    names = [f"loraflow_test_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("prefect", "mlflow")]
    with conn.cursor() as cur:
        for name in names:
            cur.execute(f'CREATE DATABASE "{name}"')
    yield names
    with conn.cursor() as cur:
        for name in names:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
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
    def __init__(self, logs: Path):
        self.logs, self.procs = logs, []

    def start(self, name: str, cmd: list[str], env: dict, cwd: Path) -> tuple:
        log = self.logs / f"{name}.log"
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc, log

    def stop(self):
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def team(databases, tmp_path_factory, project_template, tiny_base):
    """Servers, work pools, deployments and workers; yields (env, project, mlflow_uri)."""
    root = tmp_path_factory.mktemp("team")
    project = root / "project"
    shutil.copytree(project_template, project, symlinks=True)
    for part in ("flows", "tasks", "models", "configs"):
        shutil.copytree(REPO / part, project / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("prefect.yaml", "loraflow_deploy.py"):
        shutil.copy(REPO / name, project / name)
    prefect_db, mlflow_db = databases
    prefect_port, mlflow_port = free_port(), free_port()
    mlflow_uri = f"http://127.0.0.1:{mlflow_port}"
    env = {
        **os.environ,
        "PREFECT_HOME": str(root / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "MLFLOW_TRACKING_URI": mlflow_uri,
    }
    # Deployed as a new user would: no LORAFLOW_HOME, so the deploying checkout is used.
    for name in ("MLFLOW_REGISTRY_URI", "LORAFLOW_HOME", "LORAFLOW_REPOSITORY"):
        env.pop(name, None)
    procs = Processes(root)
    try:
        mlflow, mlflow_log = procs.start(
            "mlflow",
            [
                str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
                "--backend-store-uri", f"postgresql+psycopg2://postgres@127.0.0.1:5432/{mlflow_db}",
                "--artifacts-destination", str(root / "mlflow-artifacts"), "--workers", "1",
            ],
            {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            root,
        )  # fmt: skip
        server_env = {
            **env,
            "PREFECT_API_DATABASE_CONNECTION_URL": (
                f"postgresql+asyncpg://postgres@127.0.0.1:5432/{prefect_db}"
            ),
        }
        server, server_log = procs.start(
            "prefect-server",
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
             "--port", str(prefect_port)],
            server_env,
            root,
        )  # fmt: skip
        wait_http(f"{env['PREFECT_API_URL']}/health", server, server_log)
        wait_http(f"{mlflow_uri}/health", mlflow, mlflow_log)

        def prefect(*args):
            return cli([str(BIN / "prefect"), *args], env, project)

        for pool in ("gpu", "cpu"):
            prefect("work-pool", "create", pool, "--type", "process")
        deployed = prefect("--no-prompt", "deploy", "--all")
        workers = {}
        # The gpu pool's worker computes with other kernels (torch's DEFAULT level), so the
        # environment a dispatched training records can be told from the pipeline's.
        for pool, extra in (("gpu", {"ATEN_CPU_CAPABILITY": "default"}), ("cpu", {})):
            workers[pool], _ = procs.start(
                f"worker-{pool}",
                [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"],
                {**env, **extra},
                project,
            )
        yield {"env": env, "project": project, "mlflow": mlflow_uri, "deployed": deployed,
               "logs": root, "workers": workers}  # fmt: skip
    finally:
        procs.stop()


def cli(cmd: list[str], env: dict, cwd: Path, timeout: float = 600) -> str:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def tiny_config(tiny_base, steps: int, deployment: str | None = None, save_steps: int = 0) -> dict:
    return {
        "base_model": str(tiny_base),
        "data": {"path": "data", "max_seq_len": 64},
        "adapter": {"method": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "training": {
            "max_steps": steps,
            "batch_size": 8,
            "learning_rate": 3e-3,
            "deployment": deployment,
            "save_steps": save_steps,
        },
        "evaluation": {"max_examples": 16, "max_new_tokens": 8},
        "registry": {"model_name": "team", "promote_metric": "eval_loss"},
    }


FLOW_RUN_RECORD = (
    "import json, sys\n"
    "from prefect.client.orchestration import get_client\n"
    "from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId\n"
    "with get_client(sync_client=True) as c:\n"
    "    r = c.read_flow_run(sys.argv[1])\n"
    "    f = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[r.id]))\n"
    "    found = c.read_artifacts(artifact_filter=f)\n"
    "    keys = sorted(a.key or '' for a in found)\n"
    "    progress = [[a.data, a.description] for a in found if a.type == 'progress']\n"
    "    print(json.dumps({'name': r.name, 'state': r.state.type.value, 'tags': r.tags,\n"
    "                      'id': str(r.id), 'artifacts': keys, 'progress': progress}))\n"
)


def flow_run_record(team, flow_run_id: str) -> dict:
    out = cli([sys.executable, "-c", FLOW_RUN_RECORD, flow_run_id], team["env"], team["project"])
    return json.loads(out.strip().splitlines()[-1])


def deployment_run_cmd(name: str, params: dict) -> list[str]:
    return [str(BIN / "prefect"), "deployment", "run", name, "--params", json.dumps(params),
            "--watch", "--watch-timeout", "600"]  # fmt: skip


def run_deployment(team, name: str, params: dict) -> dict:
    """`prefect deployment run --watch` as an operator would; returns the flow run's record."""
    out = cli(deployment_run_cmd(name, params), team["env"], team["project"])
    record = flow_run_record(team, re.search(r"UUID: ([0-9a-f-]{36})", out)[1])
    assert record["state"] == "COMPLETED", (out, record)
    return record


def kill_after_first_checkpoint(team, name: str, params: dict) -> dict:
    """Start a deployment run, SIGKILL its flow-run process once a checkpoint is complete, and
    return the flow run's record once Prefect has settled its state."""
    checkpoints = team["project"] / ".loraflow" / "checkpoints"
    watch = subprocess.Popen(
        deployment_run_cmd(name, params),
        env=team["env"],
        cwd=team["project"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob(f"*/checkpoint-*/{CHECKPOINT_DONE}")):
        assert watch.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.02)
    worker = psutil.Process(team["workers"]["cpu"].pid)
    engines = [
        p for p in worker.children(recursive=True) if "prefect.engine" in " ".join(p.cmdline())
    ]
    assert len(engines) == 1, engines
    engines[0].kill()  # SIGKILL: no chance to report anything
    out, _ = watch.communicate(timeout=300)
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", out)[1]
    record = flow_run_record(team, flow_run_id)
    while record["state"] in ("RUNNING", "PENDING") and time.monotonic() < deadline:
        time.sleep(1)
        record = flow_run_record(team, flow_run_id)
    return record


def uninterrupted_adapter_sha256(team, config: dict) -> str:
    """The adapter of the same training run straight through in this process, no checkpoints."""
    from models.config import config_from_dict
    from models.train import train_adapter

    run_config = config_from_dict(config)
    run_config = run_config.with_data_dir(str(team["project"] / run_config.data.path))
    spec = run_config.train_spec(config["base_model"])
    return train_adapter(spec, output_dir=team["logs"] / "reference-adapter").adapter_sha256


def registry(team):
    from mlflow import MlflowClient

    mlf = MlflowClient(tracking_uri=team["mlflow"], registry_uri=team["mlflow"])
    versions = mlf.search_model_versions("name='team'")
    aliases = {k: str(v) for k, v in mlf.get_registered_model("team").aliases.items()}
    return mlf, {str(v.version) for v in versions}, aliases


def test_deployments_nightly_skip_and_promote_on_a_team_stack(team, tiny_base):
    for name in ("finetune", "finetune-nightly", "train", "promote", "export"):
        assert name in team["deployed"]
    assert (
        f"LORAFLOW_HOME is not set: deployments run from this checkout, {team['project']},"
        in (team["deployed"])
    )

    # The nightly deployment. Its first run is killed (SIGKILL) after a checkpoint: Prefect marks
    # it crashed. The next run on the same inputs resumes from that checkpoint and ends with the
    # adapter of an uninterrupted training; the one after that skips (nothing changed).
    nightly = {"config": tiny_config(tiny_base, 60, save_steps=10)}
    killed = kill_after_first_checkpoint(team, "finetune/finetune-nightly", nightly)
    assert killed["state"] == "CRASHED", killed
    first = run_deployment(team, "finetune/finetune-nightly", nightly)
    assert first["name"].startswith("lora-tiny-base0-")  # method, base model, data md5
    shown = {"evaluation", "promotion", "mlflow-run", "mlflow-model-version", "loss-curve"}
    assert shown <= set(first["artifacts"]) and first["progress"][0][0] == 100.0, first
    worker_log = (team["logs"] / "worker-cpu.log").read_text()
    assert "resuming training from the checkpoint of step" in worker_log
    assert not list((team["project"] / ".loraflow" / "checkpoints").glob("*/checkpoint-*"))
    mlf, versions, aliases = registry(team)
    assert versions == {"1"} and aliases == {"champion": "1", "challenger": "1"}
    mv = mlf.get_model_version("team", "1")
    assert mv.tags["adapter_sha256"] == uninterrupted_adapter_sha256(team, nightly["config"])
    run = mlf.get_run(mv.run_id)
    assert run.data.metrics["trainable_params"] > 0 and mv.tags["data_md5"]
    runs_before = len(mlf.search_runs([run.info.experiment_id]))

    second = run_deployment(team, "finetune/finetune-nightly", nightly)
    assert "retrain-check" in second["artifacts"]
    mlf, versions, _ = registry(team)
    assert versions == {"1"}  # nothing registered
    assert len(mlf.search_runs([run.info.experiment_id])) == runs_before  # no run opened
    worker_log = (team["logs"] / "worker-cpu.log").read_text()
    assert "unchanged since champion v1: skipped training" in worker_log

    # The on-demand deployment always trains; here the pipeline (cpu pool) dispatches the
    # training step to the train deployment (gpu pool), which pulls the data version from the
    # DVC remote, evaluates base, adapter and champion there and publishes the adapter and the
    # report on the MLflow run. A weaker adapter stays challenger.
    evaluated = re.compile(r"evaluated (.*) on \S+ \(cpu\)")
    cpu_evaluations = evaluated.findall((team["logs"] / "worker-cpu.log").read_text())
    assert cpu_evaluations == ["base, adapter"]  # the nightly run's, before any champion
    dispatched = run_deployment(
        team,
        "finetune/finetune",
        {"config": tiny_config(tiny_base, 1, deployment="train-adapter/train")},
    )
    _, versions, aliases = registry(team)
    assert versions == {"1", "2"} and aliases == {"champion": "1", "challenger": "2"}
    mv2 = mlf.get_model_version("team", "2")
    trained = mlf.list_artifacts(mv2.run_id, "trained-adapter")
    assert "trained-adapter/adapter_model.safetensors" in {a.path for a in trained}
    gpu_log = (team["logs"] / "worker-gpu.log").read_text()
    assert "published to the artifact store" in gpu_log
    cpu_log = (team["logs"] / "worker-cpu.log").read_text()
    assert "dispatching training of run" in cpu_log and dispatched["state"] == "COMPLETED"
    assert evaluated.findall(gpu_log) == ["base, adapter, champion"]
    assert evaluated.findall(cpu_log) == cpu_evaluations  # none more on the cpu worker
    assert "evaluation" in dispatched["artifacts"]  # the table, on the pipeline's flow run
    run2 = mlf.get_run(mv2.run_id)
    assert run2.data.metrics["champion_eval_loss"] == pytest.approx(
        run.data.metrics["adapter_eval_loss"], rel=1e-6
    )  # v1 re-evaluated on the gpu worker, same split and weights as its own run
    assert mv2.tags["promotion.outcome"] == "kept champion v1"
    assert mv2.tags["promotion.reason"].startswith("eval_loss ")
    # The gpu worker's training updated the pipeline's progress artifact as it went.
    [(percent, shown)] = dispatched["progress"]
    assert percent == 100.0 and shown.startswith("step 1/1"), dispatched["progress"]
    # Run and version record the environment of the worker that trained, not the pipeline's.
    for tags in (mlf.get_run(mv2.run_id).data.tags, mv2.tags):
        assert tags["env.cpu_capability"] == "DEFAULT"
        assert tags["env.var.ATEN_CPU_CAPABILITY"] == "default"
        assert tags["env.cpu"] and tags["env.threads"]
    assert "env.var.ATEN_CPU_CAPABILITY" not in mv.tags  # v1 trained on the cpu pool

    # The promote deployment (cpu pool): the gate keeps v1, a forced promotion moves to v2.
    run_deployment(team, "promote/promote", {"model_name": "team", "metric": "eval_loss"})
    assert registry(team)[2]["champion"] == "1"
    run_deployment(
        team,
        "promote/promote",
        {"model_name": "team", "version": "2", "metric": "eval_loss", "force": True},
    )
    mlf, _, aliases = registry(team)
    assert aliases["champion"] == "2"
    assert mlf.get_model_version("team", "2").tags["promotion.outcome"] == "promoted (forced)"


def test_kubernetes_gpu_job_template_is_accepted_by_the_server(team):
    """The server validates a base job template: every placeholder must be a declared variable."""
    env, project = team["env"], team["project"]
    template = REPO / "infra" / "k8s" / "gpu-job-template.json"
    prefect = str(BIN / "prefect")
    cli([prefect, "work-pool", "create", "gpu-k8s", "--type", "kubernetes",
         "--base-job-template", str(template)], env, project)  # fmt: skip
    shown = cli([prefect, "work-pool", "inspect", "gpu-k8s"], env, project)
    assert "nvidia.com/gpu" in shown and "loraflow:dev" in shown


def test_training_deployed_from_git_runs_the_deployed_commit(team, tiny_base, tmp_path):
    """LORAFLOW_REPOSITORY at deploy time: a training run clones that repository at the deployed
    commit into its scratch directory and runs from there (a GPU machine needs no checkout)."""
    env, prefect = team["env"], str(BIN / "prefect")
    source, bare = tmp_path / "source", tmp_path / "loraflow.git"
    shutil.copytree(team["project"], source, ignore=shutil.ignore_patterns(".loraflow"))

    def run(*args):
        return cli(list(args), env, source).strip()

    dvc = [sys.executable, "-m", "dvc"]
    run(*dvc, "remote", "modify", "local", "url", str(tmp_path / "dvc-remote"))  # not in the clone
    run(*dvc, "add", "-q", "data")
    run(*dvc, "push", "-q")
    data_md5 = yaml.safe_load((source / "data.dvc").read_text())["outs"][0]["md5"]
    run("git", "add", "-A")
    run("git", "commit", "-qm", "deployed")
    deployed_commit = run("git", "rev-parse", "HEAD")
    run("git", "init", "-q", "--bare", str(bare))
    run("git", "push", "-q", bare.as_uri(), "HEAD:refs/heads/main")
    cli(["git", "symbolic-ref", "HEAD", "refs/heads/main"], env, bare)
    out = cli([prefect, "--no-prompt", "deploy", "--name", "train"],
              {**env, "LORAFLOW_REPOSITORY": bare.as_uri()}, source)  # fmt: skip
    assert f"clone {bare.as_uri()} at {deployed_commit[:12]}" in out
    # A later push that breaks training: only a run of the deployed commit can complete.
    (source / "flows" / "train.py").write_text("raise SystemExit('not the deployed commit')\n")
    run("git", "commit", "-qam", "later")
    run("git", "push", "-q", bare.as_uri(), "HEAD:refs/heads/main")

    from mlflow import MlflowClient

    mlf = MlflowClient(tracking_uri=team["mlflow"], registry_uri=team["mlflow"])
    run_id = mlf.create_run(mlf.create_experiment("git-clone")).info.run_id
    params = {"config": tiny_config(tiny_base, 1), "run_id": run_id, "data_md5": data_md5}
    pulled = f"data md5 {data_md5} pulled from DVC remote"  # into the clone, not the project
    before = (team["logs"] / "worker-gpu.log").read_text().count(pulled)
    run_deployment(team, "train-adapter/train", params)
    published = {a.path for a in mlf.list_artifacts(run_id, "trained-adapter")}
    assert "trained-adapter/adapter_model.safetensors" in published
    assert (team["logs"] / "worker-gpu.log").read_text().count(pulled) == before + 1
