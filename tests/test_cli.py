"""The `loraflow` command as a user runs it: bad input fails fast and clean; the demo runs."""

import io
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import at_level, on_session_api

REPO = Path(__file__).resolve().parents[1]
LORAFLOW = str(Path(sys.executable).parent / "loraflow")


def loraflow(*args, cwd, env=None):
    return subprocess.run(
        [LORAFLOW, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **(env or {})},
    )


def write_config(project, tiny_base, **sections):
    raw = {
        "base_model": str(tiny_base),
        "data": {"path": "data", "max_seq_len": 64},
        "adapter": {"r": 4, "target_modules": ["q_proj", "v_proj"]},
        "training": {"max_steps": 2, "batch_size": 4},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    path = project / "run.yaml"
    path.write_text(json.dumps(raw))  # JSON is YAML
    return path


def write_split(project, name: str, content: bytes):
    (project / "data" / name).write_bytes(content)


def rows(*pairs) -> bytes:
    return b"".join(json.dumps({"prompt": p, "completion": c}).encode() + b"\n" for p, c in pairs)


def written(project: Path) -> dict:
    """Everything a run could have written: MLflow runs/models/versions/aliases, the DVC remote
    and data.dvc, and every object of every bucket on the S3 endpoint (when one is set)."""
    state: dict = {"data.dvc": (project / "data.dvc").exists()}
    remote = project / ".loraflow" / "dvc-remote"
    state["dvc_remote"] = sorted(str(f) for f in remote.rglob("*")) if remote.exists() else []
    db = project / "mlflow.db"
    if db.exists():
        with sqlite3.connect(db) as con:
            for table in (
                "runs",
                "registered_models",
                "model_versions",
                "registered_model_aliases",
            ):
                state[table] = sorted(con.execute(f"SELECT * FROM {table}").fetchall())
    if os.environ.get("AWS_ENDPOINT_URL"):
        import boto3
        from botocore.exceptions import ClientError

        s3 = boto3.client("s3")
        try:
            buckets = [b["Name"] for b in s3.list_buckets()["Buckets"]]
            state["s3"] = {
                b: [o["Key"] for o in s3.list_objects_v2(Bucket=b).get("Contents", [])]
                for b in buckets
            }
        except ClientError as e:  # an endpoint that refuses these credentials: nothing to list
            state["s3"] = e.response["Error"]["Code"]
    return state


def prefect_console(monkeypatch) -> io.StringIO:
    """What Prefect's console handler would print for this test, flow and task runs at INFO."""
    from prefect.logging.formatters import PrefectFormatter
    from prefect.logging.handlers import PrefectConsoleHandler

    console = io.StringIO()
    handler = PrefectConsoleHandler(stream=console)
    handler.setFormatter(
        PrefectFormatter(
            "%(name)s - %(message)s",
            flow_run_fmt="Flow run %(flow_run_name)r - %(message)s",
            task_run_fmt="Task run %(task_run_name)r - %(message)s",
        )
    )
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [*root.handlers, handler])
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
        at_level(monkeypatch, name, logging.INFO)
    return console


def test_bad_input_through_the_installed_command(project, tiny_base):
    """The same contract end to end: the `loraflow` executable, its exit code and stderr; with
    Prefect's default log level, its temporary server and a flow run refused at its checks."""
    write_split(project, "train.jsonl", rows(("Repeat: c\nAnswer:", " c")) + b'{"prompt": \n')
    cfg = write_config(project, tiny_base)
    proc = loraflow("run", str(cfg), cwd=project, env={"PREFECT_LOGGING_LEVEL": "INFO"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "loraflow: error: data/train.jsonl:2: malformed JSON (Expecting value at column 12)"
    ]
    assert written(project) == {"data.dvc": False, "dvc_remote": []}


def test_run_checks_once_as_its_flows_first_stage_and_check_starts_no_flow(
    project, tiny_base, prefect_harness, monkeypatch, capsys
):
    """`loraflow run` enters each check once, in its flow, before anything is written;
    `loraflow check` calls the same checks and starts no flow run."""
    from prefect.client.orchestration import get_client

    import tasks.preflight
    from flows.cli import main

    entered = []

    def counting(name):
        real = getattr(tasks.preflight, name)

        def counted(*args, **kwargs):
            entered.append((name, (project / "data.dvc").exists()))
            return real(*args, **kwargs)

        monkeypatch.setattr(tasks.preflight, name, counted)

    counting("run_checks")
    counting("check_reachable")

    def flow_runs() -> int:
        with get_client(sync_client=True) as prefect_client:
            return prefect_client.count_flow_runs()

    cfg = write_config(project, tiny_base, evaluation={"max_examples": 4, "max_new_tokens": 4})
    console = prefect_console(monkeypatch)
    before = flow_runs()
    assert main(["check", str(cfg)]) == 0
    assert entered == [("run_checks", False), ("check_reachable", False)]
    assert flow_runs() == before
    entered.clear()
    assert main(["run", str(cfg)]) == 0, capsys.readouterr().err
    assert entered == [("run_checks", False), ("check_reachable", False)]
    assert flow_runs() == before + 1
    assert "registered loraflow-demo v1 (challenger)" in capsys.readouterr().out
    assert (project / "data.dvc").exists()
    # Prefect's console records, held during the checks, come out once they passed, in order.
    printed = console.getvalue()
    assert printed.index("Beginning flow run") < printed.index("Task run 'check-inputs")
    assert printed.index("Task run 'check-services") < printed.index("Task run 'version-data")


def test_set_overrides_are_validated_too(project, tiny_base):
    cfg = write_config(project, tiny_base)
    proc = loraflow("check", str(cfg), "--set", "adapter.dropout=1.5", cwd=project)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"loraflow: error: {cfg}: adapter.dropout: must be in [0, 1) (got 1.5)"
    )
    ok = loraflow("check", str(cfg), "--set", "adapter.r=16", cwd=project)
    assert ok.returncode == 0, ok.stderr
    assert "train: 256 examples" in ok.stdout and ok.stdout.strip().endswith("ok")


def test_sigterm_mid_training_ends_the_run_and_stops_its_temporary_server(project, tiny_base):
    """A pod stopped or a `kill` while training: the command exits 143 with one line, the flow
    run and its MLflow run are closed as crashed/failed, nothing is registered, and the
    temporary Prefect server the command started is gone with it (Python's default SIGTERM
    action skipped its exit handlers and left that server running)."""
    import psutil
    from mlflow import MlflowClient

    steps = 1_000_000  # far more than it gets through
    cfg = write_config(project, tiny_base, training={"max_steps": steps, "logging_steps": 1})
    err = project / "stderr.log"
    with err.open("w") as stderr:
        proc = subprocess.Popen([LORAFLOW, "run", str(cfg)], cwd=project, stdout=subprocess.DEVNULL,
                                stderr=stderr, env=os.environ.copy())  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while f"/{steps} [" not in err.read_text():  # the training's progress bar
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()[-3000:]
            time.sleep(0.2)
        started = psutil.Process(proc.pid).children(recursive=True)
        assert any("prefect.server" in " ".join(p.cmdline()) for p in started), started
        proc.send_signal(signal.SIGTERM)
        exit_code = proc.wait(timeout=300)
    finally:
        proc.kill()
    _, alive = psutil.wait_procs(started, timeout=30)
    left = [" ".join(p.cmdline()) for p in alive]
    for p in alive:
        p.kill()
    assert not left, left
    assert exit_code == 128 + signal.SIGTERM
    said = [line for line in err.read_text().splitlines() if line.startswith("loraflow:")]
    assert said == ["loraflow: error: terminated (SIGTERM)"]
    store = f"sqlite:///{project / 'mlflow.db'}"
    mlf = MlflowClient(tracking_uri=store, registry_uri=store)
    [run] = mlf.search_runs([e.experiment_id for e in mlf.search_experiments()])
    assert run.info.status == "FAILED"
    assert not mlf.search_registered_models()


def test_demo_config_end_to_end_then_registry_serves_champion(project, tiny_base, prefect_harness):
    """`loraflow run configs/demo.yaml` (small budget, tiny base) and a real client afterwards;
    on the session's Prefect API (the command's temporary one: the bad-input test above)."""
    shutil.copytree(REPO / "configs", project / "configs")
    proc = loraflow(
        "run",
        "configs/demo.yaml",
        "--set",
        f"base_model={tiny_base}",
        "--set",
        "training.max_steps=20",
        "--set",
        "evaluation.max_examples=16",
        cwd=project,
        env=on_session_api(),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "registered loraflow-demo v1 (challenger): promoted to champion" in proc.stdout

    code = (
        "import json, mlflow\n"
        "from mlflow import MlflowClient\n"
        "mv = MlflowClient().get_model_version_by_alias('loraflow-demo', 'champion')\n"
        "m = mlflow.pyfunc.load_model('models:/loraflow-demo@champion')\n"
        "out = m.predict(['Reverse the words: a b c'], params={'max_new_tokens': 4})\n"
        "print(json.dumps({'version': str(mv.version), 'tags': mv.tags, 'out': out}))\n"
    )
    client = subprocess.run(
        [sys.executable, "-c", code], cwd=project, capture_output=True, text=True, timeout=300
    )
    assert client.returncode == 0, client.stderr[-3000:]
    result = json.loads(client.stdout.strip().splitlines()[-1])
    assert result["version"] == "1"
    assert result["tags"]["method"] == "lora"
    assert len(result["out"]) == 1 and isinstance(result["out"][0], str)


def test_plan_reports_per_rank_memory_and_whether_a_card_needs_sharding(
    tmp_path, tiny_base, capsys
):
    from flows.cli import main

    sharded = {"sharding": "fsdp", "num_processes": 2, "num_nodes": 2, "rendezvous": "n0:29400"}
    sharded["save_steps"] = 0
    cfg = write_config(tmp_path, tiny_base, training=sharded)
    assert main(["plan", str(cfg), "--gpu-memory", "1GiB"]) == 0
    text = capsys.readouterr().out
    assert "per rank          4 ranks, fsdp: weights " in text
    assert "on a 1.0 GiB card  fits one card unsharded" in text
    assert main(["plan", str(cfg), "--json", "--gpu-memory", "1MiB"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["ranks"] == 4 and got["gpu_memory_bytes"] == 2**20
    assert got["base_weight_bytes_per_rank"] == -(-got["base_weight_bytes"] // 4)
    # 1 MiB: fewer bytes than the tiny base's activations alone, on any number of ranks
    assert got["fsdp_ranks_needed"] is None


@pytest.mark.timeout(300)  # a run that is not refused would wait for sign-off: fail, not hang
def test_signoff_and_notify_need_a_prefect_server(project, tiny_base, capsys, monkeypatch):
    """Runs wait for sign-off, and triggers fire, only on a real Prefect server: without
    PREFECT_API_URL `run` with registry.approval: required, `approve` and `notify` refuse in one
    line before anything starts (the temporary server would stop with the command)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.cli import main

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    cfg = write_config(project, tiny_base)
    line = "loraflow: error: no Prefect server: set PREFECT_API_URL to the team's server"
    # No API URL in the settings either: a test of this worker that started the session's
    # harness before this one left it there (as a user's Prefect profile could).
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        for args in (
            ["run", str(cfg), "--set", "registry.approval=required"],
            ["approve", "demo", "1", "--comment", "ok"],
            ["notify", "s3://team-data/incoming/demo/"],
        ):
            assert main(args) == 2, args
            assert capsys.readouterr().err.startswith(line), args
    assert written(project) == {"data.dvc": False, "dvc_remote": []}
