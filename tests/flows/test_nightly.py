"""Scheduled retraining on a worker that keeps nothing, four nights in a row.

The team stack of bench.team_stack (Prefect server and process workers, MLflow server, both on
PostgreSQL, authentication on) and moto's S3 server on loopback, which holds both where new data
lands (`data.source`) and the DVC remote. The nightly deployment is deployed as a team without a
shared checkout deploys it: LORAFLOW_REPOSITORY (a bare git repository), so each run clones the
deployed commit into the new temporary directory the process worker starts it in, reads its
config from configs/demo.yaml in the clone with overrides, its data from the bucket, and decides
"unchanged" against the champion's tags in MLflow.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import time

import boto3
import pytest

from bench.team_stack import BIN, TeamStack, cli, deploy_code
from tests.conftest import free_port, moto_server
from tests.flows.test_team import (
    deployment_run_cmd,
    flow_run_record,
    pipeline_client,
    postgres_or_skip,
)

pytestmark = pytest.mark.slow

AWS = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-value",
    "AWS_DEFAULT_REGION": "us-east-1",
}
INCOMING, DVC_STORE = "incoming", "dvc-store"


@pytest.fixture(scope="module")
def nightly(tmp_path_factory, project_template, tiny_base):
    """The stack, the S3 API, and finetune-nightly deployed from a git repository."""
    postgres_or_skip().close()
    root = tmp_path_factory.mktemp("nightly")
    project = root / "project"
    shutil.copytree(project_template, project, symlinks=True)
    shutil.rmtree(project / "data")  # the data lives in the bucket only
    deploy_code(project)
    with moto_server() as s3_url:
        aws = {**AWS, "AWS_ENDPOINT_URL": s3_url}
        s3 = boto3.client("s3", endpoint_url=s3_url, **_credentials())
        for bucket in (INCOMING, DVC_STORE):
            s3.create_bucket(Bucket=bucket)
        # The DVC remote a clone pushes to and pulls from: in the repository's .dvc/config.
        dvc = [sys.executable, "-m", "dvc"]
        cli([*dvc, "remote", "add", "-d", "-f", "s3", f"s3://{DVC_STORE}/loraflow"], aws, project)
        cli([*dvc, "remote", "modify", "s3", "endpointurl", s3_url], aws, project)
        stack = TeamStack(
            root,
            project,
            models=["nightly"],
            pool_limits={"gpu": 1, "cpu": 1},
            worker_env={"cpu": aws},
        )
        try:
            stack.start()
            bare = root / "loraflow.git"
            cli(["git", "add", "-A"], stack.env, project)
            cli(["git", "commit", "-qm", "deployed"], stack.env, project)
            cli(["git", "init", "-q", "--bare", str(bare)], stack.env, root)
            cli(["git", "push", "-q", bare.as_uri(), "HEAD:refs/heads/main"], stack.env, project)
            cli(["git", "symbolic-ref", "HEAD", "refs/heads/main"], stack.env, bare)
            deployed = cli(
                [str(BIN / "prefect"), "--no-prompt", "deploy", "--name",
                 "finetune-nightly"],
                {**stack.env, "LORAFLOW_REPOSITORY": bare.as_uri()},
                project,
            )  # fmt: skip
            assert f"runs clone {bare.as_uri()} at " in deployed
            yield {"env": stack.env, "project": project, "logs": root, "stack": stack,
                   "mlflow": stack.mlflow_uri, "s3": s3, "s3_url": s3_url}  # fmt: skip
        finally:
            stack.stop()


def _credentials() -> dict:
    return {
        "aws_access_key_id": AWS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS["AWS_SECRET_ACCESS_KEY"],
        "region_name": AWS["AWS_DEFAULT_REGION"],
    }


def overrides(tiny_base, source: str) -> list[str]:
    """configs/demo.yaml made tiny, fed from `source`."""
    return [
        f"base_model={tiny_base}",
        f"data.source={source}",
        "adapter.r=4",
        "adapter.alpha=8",
        "adapter.target_modules=[q_proj,v_proj]",
        "training.max_steps=2",
        "training.batch_size=8",
        "training.warmup_steps=0",
        "training.logging_steps=1",
        "evaluation.max_examples=16",
        "evaluation.max_new_tokens=8",
        "evaluation.batch_size=16",
        "registry.model_name=nightly",
        "registry.experiment=loraflow",
        "registry.promote_metric=eval_loss",
    ]


def night(nightly, tiny_base, source=f"s3://{INCOMING}/demo", job_env=None) -> dict:
    """One scheduled run of finetune-nightly (as the schedule starts it, on the cpu worker)."""
    params = {
        "config_file": "configs/demo.yaml",
        "overrides": overrides(tiny_base, source),
        "skip_if_unchanged": True,
    }
    cmd = deployment_run_cmd("finetune/finetune-nightly", params)
    if job_env:
        cmd += ["--job-variable", f"env={json.dumps(job_env)}"]
    proc = subprocess.run(cmd, env=nightly["env"], cwd=nightly["project"], capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    created = re.search(r"UUID: ([0-9a-f-]{36})", proc.stdout)
    assert created, (proc.stdout, proc.stderr)
    return flow_run_record(nightly, created[1])


# What a night that trains runs, and a skipped one must not.
TRAINING_STAGES = {"open-mlflow-run", "train-adapter", "evaluate", "register-adapter", "promote"}


def stages(nightly, flow_run_id: str, until: str, timeout_s: float = 60.0) -> set[str]:
    """The names of the tasks a flow run ran, read as the pipeline's account once `until` is
    among them (Prefect 3 records task runs from events, after the flow run has returned)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    server = {PREFECT_API_URL: nightly["env"]["PREFECT_API_URL"],
              PREFECT_API_AUTH_STRING: nightly["env"]["PREFECT_API_AUTH_STRING"]}  # fmt: skip
    only = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    deadline = time.monotonic() + timeout_s
    with temporary_settings(updates=server), get_client(sync_client=True) as c:
        while True:
            names = {run.name.rsplit("-", 1)[0] for run in c.read_task_runs(flow_run_filter=only)}
            if until in names or time.monotonic() > deadline:
                return names  # "<task name>-<3 characters>"
            time.sleep(0.5)


def put(nightly, key: str, body: bytes) -> str:
    """Write an object where new data lands; its ETag (single part: the md5 of its bytes)."""
    nightly["s3"].put_object(Bucket=INCOMING, Key=key, Body=body)
    return hashlib.md5(body).hexdigest()


def registry(nightly):
    mlf = pipeline_client({"mlflow": nightly["mlflow"], "stack": nightly["stack"]})
    versions = {v.version: v for v in mlf.search_model_versions("name='nightly'")}
    aliases = {k: str(v) for k, v in mlf.get_registered_model("nightly").aliases.items()}
    return mlf, {str(k): v for k, v in versions.items()}, aliases


def dvc_objects(nightly) -> set[str]:
    pages = nightly["s3"].get_paginator("list_objects_v2").paginate(Bucket=DVC_STORE)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def copied_into(nightly) -> list[str]:
    """Where each run copied data.source (one temporary directory per run)."""
    log = (nightly["logs"] / "worker-cpu.log").read_text()
    return re.findall(r"copied into (\S+) \(", log)


def test_four_nights_on_a_worker_that_keeps_nothing(nightly, tiny_data, tiny_base):
    train = (tiny_data / "train.jsonl").read_bytes()
    etags = {
        "train.jsonl": put(nightly, "demo/train.jsonl", train),
        "eval.jsonl": put(nightly, "demo/eval.jsonl", (tiny_data / "eval.jsonl").read_bytes()),
    }

    # Night 1: objects in the bucket, no champion: trains, registers, promotes.
    first = night(nightly, tiny_base)
    assert first["state"] == "COMPLETED", first
    mlf, versions, aliases = registry(nightly)
    assert set(versions) == {"1"} and aliases == {"champion": "1", "challenger": "1"}
    v1 = versions["1"].tags
    assert v1["data_source"] == f"s3://{INCOMING}/demo" and v1["data_source.count"] == "2"
    assert v1["data_source.objects"] == "; ".join(f"{k} etag={etags[k]}" for k in sorted(etags))
    assert (
        mlf.get_run(versions["1"].run_id).data.tags["data_source.objects"]
        == (v1["data_source.objects"])
    )
    # The data version went to the DVC remote in the bucket (a clone keeps nothing else).
    pushed = dvc_objects(nightly)
    assert any(key.endswith(v1["data_md5"].removesuffix(".dir")[2:] + ".dir") for key in pushed)
    runs_before = len(mlf.search_runs([mlf.get_run(versions["1"].run_id).info.experiment_id]))

    # Night 2: nothing changed: skipped, nothing opened or registered, in seconds.
    second = night(nightly, tiny_base)
    assert second["state"] == "COMPLETED" and "retrain-check" in second["artifacts"], second
    mlf, versions, _ = registry(nightly)
    assert set(versions) == {"1"}
    assert len(mlf.search_runs([mlf.get_run(versions["1"].run_id).info.experiment_id])) == (
        runs_before
    )
    assert TRAINING_STAGES <= stages(nightly, first["id"], until="promote")
    skipped = stages(nightly, second["id"], until="record-skip")
    assert not skipped & TRAINING_STAGES, skipped
    assert "unchanged since champion v1: skipped training" in (
        (nightly["logs"] / "worker-cpu.log").read_text()
    )

    # Night 3: one new object in the prefix: a new data version, retrained; the lineage names it.
    new_etag = put(nightly, "demo/notes/2026-12-03.jsonl", b'{"note": "new this night"}\n')
    third = night(nightly, tiny_base)
    assert third["state"] == "COMPLETED", third
    _, versions, _ = registry(nightly)
    assert set(versions) == {"1", "2"}
    v2 = versions["2"].tags
    assert v2["data_md5"] != v1["data_md5"] and v2["data_source.count"] == "3"
    assert f"notes/2026-12-03.jsonl etag={new_etag}" in v2["data_source.objects"].split("; ")

    # Night 4: an object rewritten with other bytes: retrained on them.
    lines = train.splitlines(keepends=True)
    rewritten = put(nightly, "demo/train.jsonl", b"".join(lines[: len(lines) - 16]))
    fourth = night(nightly, tiny_base)
    assert fourth["state"] == "COMPLETED", fourth
    _, versions, _ = registry(nightly)
    assert set(versions) == {"1", "2", "3"}
    v3 = versions["3"].tags
    assert v3["data_md5"] not in (v1["data_md5"], v2["data_md5"])
    assert f"train.jsonl etag={rewritten}" in v3["data_source.objects"].split("; ")
    assert f"train.jsonl etag={etags['train.jsonl']}" in v2["data_source.objects"].split("; ")

    # Every night ran in its own new directory, none of it the deploying checkout.
    places = copied_into(nightly)
    assert len(places) == len(set(places)) == 4, places
    assert not any(p.startswith(str(nightly["project"])) for p in places), places
    assert not (nightly["project"] / "data").exists()


def test_a_bad_source_fails_the_run_in_one_line_before_training(nightly, tiny_data, tiny_base):
    """Empty, unreachable, a malformed file: the run fails at its first stage, in one line
    naming the source (or the file and line); nothing trained, registered or pushed."""
    before = mlflow_state(nightly)
    pushed = dvc_objects(nightly)
    eval_split = (tiny_data / "eval.jsonl").read_bytes()
    put(nightly, "bad/eval.jsonl", eval_split)
    put(nightly, "bad/train.jsonl", eval_split + b"{not json\n")
    bad_line = len(eval_split.splitlines()) + 1
    closed = f"http://127.0.0.1:{free_port()}"
    cases = [
        (f"s3://{INCOMING}/nothing-here", None,
         f"data.source s3://{INCOMING}/nothing-here: empty (no objects under the prefix)"),
        (f"s3://{INCOMING}/demo", {"AWS_ENDPOINT_URL": closed, "AWS_MAX_ATTEMPTS": "1"},
         f"data.source s3://{INCOMING}/demo: cannot reach the S3 endpoint at {closed}"),
        (f"s3://{INCOMING}/bad", None, f"train.jsonl:{bad_line}: malformed JSON"),
    ]  # fmt: skip
    for source, job_env, line in cases:
        record = night(nightly, tiny_base, source=source, job_env=job_env)
        assert record["state"] == "FAILED", record
        assert line in record["message"] and "\n" not in record["message"], record
        assert mlflow_state(nightly) == before  # no run opened, no version registered
        assert dvc_objects(nightly) == pushed  # nothing pushed


def mlflow_state(nightly) -> tuple[int, int]:
    """(runs in experiment `loraflow`, versions of model `nightly`), 0 where there is none."""
    mlf = pipeline_client({"mlflow": nightly["mlflow"], "stack": nightly["stack"]})
    experiment = mlf.get_experiment_by_name("loraflow")
    runs = len(mlf.search_runs([experiment.experiment_id])) if experiment else 0
    return runs, len(mlf.search_model_versions("name='nightly'"))
