"""infra/k8s/multinode-train.yaml: the Indexed Job and its headless Service agree, and every pod
runs the train-adapter flow with the arguments it takes."""

import inspect
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_indexed_job_behind_a_headless_service_runs_the_training_flow():
    service, job = yaml.safe_load_all((REPO / "infra/k8s/multinode-train.yaml").read_text())
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    spec = job["spec"]
    assert job["kind"] == "Job" and spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] >= 2  # every node at once
    pod = spec["template"]["spec"]
    # pod 0 is <job>-0.<service>: the rendezvous endpoint the config names
    assert pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
    (container,) = pod["containers"]
    assert container["ports"][0]["containerPort"] == service["spec"]["ports"][0]["port"]
    script = container["args"][0]
    compile(script, "multinode-train.yaml", "exec")
    from flows.train import train_remote

    params = inspect.signature(train_remote.fn).parameters
    for name in ("config", "run_id", "data_md5", "checkpoint_key"):
        assert f"{name}=" in script and name in params
    header = (REPO / "infra/k8s/multinode-train.yaml").read_text()
    rendezvous = f"{job['metadata']['name']}-0.{service['metadata']['name']}:29400"
    assert f"training.rendezvous: {rendezvous}" in header
