"""`make soak` (= python -m bench.soak): the 2 a.m. rush on a loopback team stack.

N finetune deployment runs are submitted at once (short configs, each on its own data version,
brought in from where it landed: `data.source`, a shared directory per run),
training dispatched to the `gpu` pool (limit 1) from pipelines on the `cpu` pool (limit 2), on
the stack of bench.team_stack (Prefect + MLflow on PostgreSQL, authentication on). Reported:
how many completed, the most trainings that ran at once (from the flow runs' start and end
times on the Prefect server), the registered versions and their lineage, the champion, the
promotion decisions, the time to drain the queue and the worst wait of a flow run.

--restart-mlflow stops the tracking server once, after the first training has finished, and
starts it again on the same data: every run must complete or fail with a one-line error that
names the kept adapter; the failed ones are then submitted again and must register, with
nothing registered twice. Not part of `make test` (minutes, and a PostgreSQL at 127.0.0.1).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.team_stack import TeamStack, deploy_code

# No Prefect import at module level: Prefect reads its settings (the API URL and auth string of
# the stack started below) when first imported.

MODEL = "soak"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)


def build_project(root: Path, n: int) -> tuple[Path, Path]:
    """A git + DVC project, `n` data sets where new data lands (incoming/data-0 ... data-n-1,
    each run's data.source) and a tiny base model."""
    from demo import build_demo_base_model, build_demo_data

    base = root / "tiny-base"
    build_demo_base_model(base, pretrain_steps=20, hidden_size=64, num_layers=2, n_docs=2000)
    project = root / "project"
    project.mkdir()
    deploy_code(project)
    for i in range(n):  # different sizes and seeds: different md5s
        build_demo_data(root / "incoming" / f"data-{i}", seed=i, n_train=128 + 8 * i, n_eval=16)
    dvc = [sys.executable, "-m", "dvc"]
    run(["git", "init", "-q"], project)
    run(["git", "config", "user.email", "soak@example.com"], project)
    run(["git", "config", "user.name", "soak"], project)
    run([*dvc, "init", "-q"], project)
    run([*dvc, "config", "core.analytics", "false"], project)
    run([*dvc, "remote", "add", "-d", "local", str(root / "dvc-remote")], project)
    # Each run copies its source into its own data-<i>/ (runs share this checkout) and versions it.
    (project / ".gitignore").write_text(".loraflow/\n/data-*/\n")
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "soak"], project)
    return project, base


def soak_config(base: Path, i: int, steps: int, root: Path) -> dict:
    source = str(root / "incoming" / f"data-{i}")
    return {
        "base_model": str(base),
        "data": {"path": f"data-{i}", "source": source, "max_seq_len": 64},
        "adapter": {"method": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "training": {"max_steps": steps, "batch_size": 8, "learning_rate": 3e-3,
                     "deployment": "train-adapter/train"},
        "evaluation": {"max_examples": 8, "max_new_tokens": 4},
        "registry": {"model_name": MODEL, "promote_metric": "eval_loss"},
    }  # fmt: skip


def submit(client, deployment_id, configs: dict[int, dict]) -> dict[int, str]:
    """One flow run per config, all at once; returns {data index: flow run id}."""
    return {
        i: str(client.create_flow_run_from_deployment(deployment_id, parameters={"config": c}).id)
        for i, c in configs.items()
    }


def flow_runs(client, deployment_id):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    found = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    return client.read_flow_runs(deployment_filter=found, limit=200)


def max_overlap(runs) -> int:
    """The most runs that were running at the same moment (start/end times on the server)."""
    events = []
    for r in runs:
        if r.start_time:
            end = r.end_time.timestamp() if r.end_time else time.time()
            events += [(r.start_time.timestamp(), 1), (end, -1)]
    most = now = 0
    for _, step in sorted(events):  # at a tie an end (-1) comes before a start
        now += step
        most = max(most, now)
    return most


def wait_for(client, ids: set[str], timeout: float, on_poll=None) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        runs = {str(r.id): r for r in (client.read_flow_run(i) for i in ids)}
        if on_poll:
            on_poll(runs)
        if all(r.state.type.value in TERMINAL for r in runs.values()):
            return runs
        if time.monotonic() > deadline:
            raise SystemExit(f"soak: not drained after {timeout:g} s")
        time.sleep(2)


def registry_report(stack: TeamStack) -> dict:
    from mlflow import MlflowClient

    from tasks.lineage import MANIFEST_TAGS

    mlf = MlflowClient(stack.mlflow_uri, stack.mlflow_uri)  # as the pipeline (env)
    versions = mlf.search_model_versions(f"name = '{MODEL}'")
    aliases = mlf.get_registered_model(MODEL).aliases
    md5s = [v.tags.get("data_md5") for v in versions]
    return {
        "versions": len(versions),
        "data_versions_registered": len(set(md5s)),
        "registered_twice": len(md5s) - len(set(md5s)),
        "complete_lineage": sum(all(v.tags.get(k) for k in MANIFEST_TAGS) for v in versions),
        "data_source_recorded": sum(
            v.tags.get("data_source.count") == "2"
            and "train.jsonl etag=" in v.tags.get("data_source.objects", "")
            for v in versions
        ),
        "promotion_decisions_tagged": sum("promotion.outcome" in v.tags for v in versions),
        "champion": str(aliases.get("champion")),
        "promoted_outcomes": sorted(
            v.version for v in versions if v.tags.get("promotion.outcome", "").startswith("prom")
        ),
    }


def soak(args) -> dict:
    root = Path(tempfile.mkdtemp(prefix="loraflow-soak-"))
    project, base = build_project(root, args.runs)
    limits = {"gpu": args.gpu_limit, "cpu": args.cpu_limit}
    stack = TeamStack(root, project, models=[MODEL], pool_limits=limits)
    report: dict = {"runs": args.runs, "pool_limits": limits, "root": str(root)}
    try:
        stack.start()
        os.environ.update(stack.env)  # this process is a Prefect and MLflow client too
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            finetune = client.read_deployment_by_name("finetune/finetune").id
            train = client.read_deployment_by_name("train-adapter/train").id
            configs = {i: soak_config(base, i, args.steps, root) for i in range(args.runs)}
            submitted = time.time()
            ids = submit(client, finetune, configs)
            restarted = []

            def maybe_restart(runs):
                if args.restart_mlflow and not restarted:
                    done = [r for r in flow_runs(client, train) if r.state.type.value in TERMINAL]
                    if done:
                        stack.stop_mlflow()
                        time.sleep(args.outage_s)
                        stack.start_mlflow()
                        restarted.append(time.time() - submitted)

            runs = wait_for(client, set(ids.values()), args.timeout, maybe_restart)
            drained = time.time() - submitted
            by_id = {v: k for k, v in ids.items()}
            failed = {by_id[i]: r for i, r in runs.items() if r.state.type.value != "COMPLETED"}
            report["completed"] = args.runs - len(failed)
            report["failed"] = {i: (r.state.message or "")[:400] for i, r in failed.items()}
            # Each failure must be one line naming where its trained adapter is kept.
            report["failed_one_line_adapter_kept"] = sum(
                len((r.state.message or "").strip().splitlines()) == 1
                and "adapter is kept at" in (r.state.message or "")
                for r in failed.values()
            )
            report["mlflow_restarted_at_s"] = restarted[0] if restarted else None
            report["drain_s"] = round(drained, 1)
            everything = list(runs.values()) + flow_runs(client, train)
            waits = [
                (r.start_time - r.expected_start_time).total_seconds()
                for r in everything
                if r.start_time and r.expected_start_time
            ]
            report["worst_flow_run_wait_s"] = round(max(waits), 1)
            report["max_concurrent_trainings"] = max_overlap(flow_runs(client, train))
            report["max_concurrent_pipelines"] = max_overlap(runs.values())
            if failed:
                again = submit(client, finetune, {i: configs[i] for i in failed})
                rerun = wait_for(client, set(again.values()), args.timeout)
                report["rerun_completed"] = sum(
                    r.state.type.value == "COMPLETED" for r in rerun.values()
                )
        report["registry"] = registry_report(stack)
    finally:
        stack.stop()
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=8)
    p.add_argument("--steps", type=int, default=8, help="training steps per run")
    p.add_argument("--gpu-limit", type=int, default=1)
    p.add_argument("--cpu-limit", type=int, default=2)
    p.add_argument("--restart-mlflow", action="store_true")
    p.add_argument("--outage-s", type=float, default=5.0, help="seconds the server stays down")
    p.add_argument("--timeout", type=float, default=3600.0)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the stack on the way out
    report = soak(args)
    print(json.dumps(report, indent=2))
    reg = report["registry"]
    ok = (
        report["completed"] + report.get("rerun_completed", 0) == args.runs
        and report["failed_one_line_adapter_kept"] == len(report["failed"])
        and report["max_concurrent_trainings"] == args.gpu_limit
        and reg["versions"] == reg["data_versions_registered"] == args.runs
        and reg["registered_twice"] == 0
        and reg["complete_lineage"] == reg["promotion_decisions_tagged"] == args.runs
        and reg["data_source_recorded"] == args.runs
        and reg["champion"] != "None"
    )
    print("soak:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
