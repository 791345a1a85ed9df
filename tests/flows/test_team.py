"""The team setup for real: Prefect server + process workers + MLflow server, both on PostgreSQL,
authentication on (Prefect's API auth string, MLflow's basic-auth app with the users of
infra/mlflow_access.py), work-pool limits from infra/pools.sh.

Everything runs as separate processes on loopback, as in production (bench.team_stack):
`prefect deploy --all` reads the repository's prefect.yaml, workers pick the runs up as the
pipeline's account, flows register into the MLflow server over HTTP (artifacts proxied by it).
Skipped, with the reason, only where no PostgreSQL answers.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psutil
import pytest

from bench.team_stack import (
    BIN,
    PIPELINE,
    READER,
    NoPostgres,
    TeamStack,
    cli,
    deploy_code,
    postgres,
)
from models.training.checkpoints import CHECKPOINT_DONE
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def postgres_or_skip():
    try:
        return postgres()
    except NoPostgres as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def team(tmp_path_factory, project_template, tiny_base):
    """Servers, users, work pools, deployments and workers; yields a dict (see below)."""
    postgres_or_skip().close()
    root = tmp_path_factory.mktemp("team")
    project = root / "project"
    shutil.copytree(project_template, project, symlinks=True)
    deploy_code(project)
    # Deployed as a new user would: no LORAFLOW_HOME, so the deploying checkout is used. The gpu
    # pool's worker computes with other kernels (torch's DEFAULT level), so the environment a
    # dispatched training records can be told from the pipeline's.
    stack = TeamStack(
        root,
        project,
        models=["team"],
        pool_limits={"gpu": 1, "cpu": 2},
        worker_env={"gpu": {"ATEN_CPU_CAPABILITY": "default"}},
    )
    try:
        stack.start()
        yield {"env": stack.env, "project": project, "mlflow": stack.mlflow_uri,
               "deployed": stack.deployed, "logs": root, "workers": stack.workers,
               "stack": stack}  # fmt: skip
    finally:
        stack.stop()


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


def flow_run_record(team, flow_run_id: str) -> dict:
    """The flow run's name, state (and its message), wait before it started, how long it ran,
    tags, artifact keys and progress,
    read in this process as the pipeline's account (a client process per call costs seconds)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    server = {PREFECT_API_URL: team["env"]["PREFECT_API_URL"],
              PREFECT_API_AUTH_STRING: team["env"]["PREFECT_API_AUTH_STRING"]}  # fmt: skip
    with temporary_settings(updates=server), get_client(sync_client=True) as c:
        r = c.read_flow_run(flow_run_id)
        f = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[r.id]))
        found = c.read_artifacts(artifact_filter=f)
    return {
        "name": r.name,
        "state": r.state.type.value,
        "waited_s": (r.start_time - r.created).total_seconds() if r.start_time else None,
        "ran_s": (r.end_time - r.start_time).total_seconds() if r.end_time else None,
        "message": r.state.message or "",
        "tags": r.tags,
        "id": str(r.id),
        "artifacts": sorted(a.key or "" for a in found),
        "progress": [[a.data, a.description] for a in found if a.type == "progress"],
    }


def deployment_run_cmd(name: str, params: dict, start_in: str = "") -> list[str]:
    return [str(BIN / "prefect"), "deployment", "run", name, "--params", json.dumps(params),
            "--watch", "--watch-timeout", "600",
            *(["--start-in", start_in] if start_in else [])]  # fmt: skip


def run_deployment(team, name: str, params: dict, start_in: str = "") -> dict:
    """`prefect deployment run --watch` as an operator would (with `start_in`, a run scheduled
    for later, as the cron schedule makes them); returns the flow run's record."""
    out = cli(deployment_run_cmd(name, params, start_in), team["env"], team["project"])
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
    deadline = time.monotonic() + 900  # a loaded 2-core machine takes minutes to get there
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
        time.sleep(0.2)
        record = flow_run_record(team, flow_run_id)
    return record


def uninterrupted_adapter_sha256(team, config: dict) -> str:
    """The adapter of the same training run straight through in this process, no checkpoints."""
    from models.config.run import config_from_dict
    from models.training.train import train_adapter

    run_config = config_from_dict(config)
    run_config = run_config.with_data_dir(str(team["project"] / run_config.data.path))
    spec = run_config.train_spec(config["base_model"])
    return train_adapter(spec, output_dir=team["logs"] / "reference-adapter").adapter_sha256


def pipeline_client(team):
    """An MLflow client as the pipeline's account (authentication is on)."""
    from mlflow import MlflowClient

    uri = team["mlflow"].replace("://", f"://{PIPELINE}:{team['stack'].passwords[PIPELINE]}@")
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def registry(team):
    mlf = pipeline_client(team)
    versions = mlf.search_model_versions("name='team'")
    aliases = {k: str(v) for k, v in mlf.get_registered_model("team").aliases.items()}
    return mlf, {str(v.version) for v in versions}, aliases


def deploy_training_from_git(team, tmp_path) -> str:
    """`prefect deploy --name train` with LORAFLOW_REPOSITORY: training runs clone that
    repository at the deployed commit into their scratch directory and run from there (a GPU
    machine needs no checkout). A later push breaks training, so only a run of the deployed
    commit can complete. Returns the deployed commit."""
    env, prefect = team["env"], str(BIN / "prefect")
    source, bare = tmp_path / "source", tmp_path / "loraflow.git"
    shutil.copytree(team["project"], source, ignore=shutil.ignore_patterns(".loraflow"))

    def run(*args):
        return cli(list(args), env, source).strip()

    # The clone pulls data versions from the remote the pipeline pushes to: an absolute URL
    # (the project's is relative to its checkout, so a clone would look inside itself).
    remote = team["project"] / ".loraflow" / "dvc-remote"
    run(sys.executable, "-m", "dvc", "remote", "modify", "local", "url", str(remote))
    run("git", "add", "-A")
    run("git", "commit", "-qm", "deployed")
    deployed_commit = run("git", "rev-parse", "HEAD")
    run("git", "init", "-q", "--bare", str(bare))
    run("git", "push", "-q", bare.as_uri(), "HEAD:refs/heads/main")
    cli(["git", "symbolic-ref", "HEAD", "refs/heads/main"], env, bare)
    out = cli([prefect, "--no-prompt", "deploy", "--name", "train"],
              {**env, "LORAFLOW_REPOSITORY": bare.as_uri()}, source)  # fmt: skip
    assert f"clone {bare.as_uri()} at {deployed_commit[:12]}" in out
    (source / "flows" / "train.py").write_text("raise SystemExit('not the deployed commit')\n")
    run("git", "commit", "-qam", "later")
    run("git", "push", "-q", bare.as_uri(), "HEAD:refs/heads/main")
    return deployed_commit


def test_deployments_nightly_skip_and_promote_on_a_team_stack(team, tiny_base, tmp_path):
    for name in ("finetune", "finetune-nightly", "train", "promote", "export"):
        assert name in team["deployed"]
    assert (
        f"LORAFLOW_HOME is not set: deployments run from this checkout, {team['project']},"
        in (team["deployed"])
    )

    # The nightly deployment. Its first run is killed (SIGKILL) after a checkpoint: Prefect marks
    # it crashed. The next run on the same inputs resumes from that checkpoint and ends with the
    # adapter of an uninterrupted training; the one after that skips (nothing changed).
    nightly = {"config": tiny_config(tiny_base, 30, save_steps=10)}
    killed = kill_after_first_checkpoint(team, "finetune/finetune-nightly", nightly)
    assert killed["state"] == "CRASHED", killed
    # A run scheduled for later (as the cron schedule makes them), run by the pipeline's account.
    first = run_deployment(team, "finetune/finetune-nightly", nightly, start_in="3 seconds")
    assert first["waited_s"] >= 2, first
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
    # training step to the train deployment (gpu pool), deployed from git: its run clones the
    # deployed commit, pulls the data version from the DVC remote into the clone, evaluates
    # base, adapter and champion there and publishes the adapter and the report on the MLflow
    # run. A weaker adapter stays challenger.
    deploy_training_from_git(team, tmp_path)
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
    # Run from the clone of the deployed commit (the later commit cannot train), not the project.
    [pulled] = re.findall(r"pulled from DVC remote \S+ into (\S+)", gpu_log)
    assert pulled.endswith(f"/.loraflow/data-versions/{mv2.tags['data_md5'][:32]}/data"), pulled
    assert not pulled.startswith(str(team["project"])), pulled
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

    # A reader (the default READ) may not move `champion` by hand: refused in one line naming
    # the server (password masked), the user and the permission, before anything is written.
    stack = team["stack"]
    v2_tags = mlf.get_model_version("team", "2").tags
    reader_uri = stack.mlflow_uri.replace("://", f"://{READER}:{stack.passwords[READER]}@")
    refused = subprocess.run(
        [str(BIN / "loraflow"), "promote", "--model", "team", "--version", "2",
         "--metric", "eval_loss", "--force"],
        env={**stack.as_user(None), "MLFLOW_TRACKING_URI": reader_uri},
        cwd=team["project"], capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    line = (
        f"MLflow at http://***@127.0.0.1:{stack.mlflow_port}: user '{READER}' may not change "
        "aliases of 'team' (has READ, needs EDIT)"
    )
    assert refused.returncode == 2 and line in refused.stderr, (refused.stdout, refused.stderr)
    assert stack.passwords[READER] not in refused.stdout + refused.stderr
    mlf, _, aliases = registry(team)
    assert aliases["champion"] == "1" and mlf.get_model_version("team", "2").tags == v2_tags
    assert not mlf.search_registered_models("name = 'team.promotion-lock'")
    # The promote deployment (cpu pool) moves it when forced. (The gate keeping v1 is the
    # dispatched run's promotion above; a promotion by the gate alone: tests/flows/test_promote.)
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


def test_work_pools_have_their_concurrency_limits(team):
    """infra/pools.sh set them (gpu 1: one training per GPU; cpu 2); queued runs wait."""
    read = (
        "from prefect.client.orchestration import get_client\n"
        "with get_client(sync_client=True) as c:\n"
        "    print({p: c.read_work_pool(p).concurrency_limit for p in ('gpu', 'cpu')})\n"
    )
    out = cli([sys.executable, "-c", read], team["env"], team["project"])
    assert out.strip().splitlines()[-1] == "{'gpu': 1, 'cpu': 2}"


def test_servers_refuse_requests_without_credentials(team):
    """Either API without credentials (or with wrong ones) answers 401; health checks stay open."""
    stack = team["stack"]
    requests = {
        "prefect": f"{stack.prefect_api}/flow_runs/filter",
        "mlflow": f"{stack.mlflow_uri}/api/2.0/mlflow/registered-models/search",
    }
    for server, url in requests.items():
        for auth in (None, "Basic " + base64.b64encode(b"admin:wrong-password").decode()):
            request = urllib.request.Request(url, method="POST" if server == "prefect" else "GET")
            if auth:
                request.add_header("Authorization", auth)
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, data=b"{}" if server == "prefect" else None)
            assert refused.value.code == 401, (server, auth)
    urllib.request.urlopen(f"{stack.prefect_api}/health").close()
    urllib.request.urlopen(f"{stack.mlflow_uri}/health").close()


def test_no_password_in_logs_artifacts_tags_or_databases(team):
    """After the runs above: no password (nor its HTTP basic form) in any server or worker log,
    artifact, project file, Prefect home, or in a dump of the three databases (MLflow's runs,
    params and tags; its users; Prefect's runs, logs and artifacts). Runs last in this module."""
    stack = team["stack"]
    written = [
        subprocess.run(["pg_dump", "-h", "127.0.0.1", "-U", "postgres", database],
                       capture_output=True, check=True).stdout
        for database in stack.databases.values()
    ]  # fmt: skip
    files = [f for f in stack.root.rglob("*") if f.is_file() and stack.secrets not in f.parents]
    assert len(files) > 50 and any(f.name == "worker-cpu.log" for f in files)
    written += [f.read_bytes() for f in files]
    needles = [*stack.passwords.values(), stack.auth_string.split(":", 1)[1]]
    needles += [base64.b64encode(stack.auth_string.encode()).decode()]
    basic = [f"{user}:{password}" for user, password in stack.passwords.items()]
    needles += [base64.b64encode(form.encode()).decode() for form in basic]
    assert {n for n in needles for blob in written if n.encode() in blob} == set()
