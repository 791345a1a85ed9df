"""Figure 5: wall time of an unchanged rerun vs the first run of `loraflow run --skip-unchanged`.

A scratch project (git + DVC, local DVC remote, the demo data) with the embedded defaults:
Prefect's ephemeral API, MLflow on sqlite, no servers. The first run trains, evaluates,
registers and promotes; the rerun of the same command on unchanged data, config and base model
finds them equal to the champion's and skips training. Both are whole CLI processes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.assets import DEMO_BASE, DEMO_CONFIG, DEMO_DATA, require_demo_assets
from bench.measure import Figure
from bench.workers import BenchError, worker_env


def _call(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise BenchError(f"{' '.join(cmd)} failed in {cwd}:\n{tail}")
    return proc.stdout


def scratch_project(root: Path, env: dict[str, str]) -> None:
    """git + DVC repository with a local DVC remote and the demo data under data/."""
    dvc = [sys.executable, "-m", "dvc"]
    root.mkdir(parents=True)
    for cmd in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "bench@example.com"],
        ["git", "config", "user.name", "bench"],
        [*dvc, "init", "-q"],
        [*dvc, "config", "core.analytics", "false"],
        [*dvc, "remote", "add", "-d", "local", ".loraflow/dvc-remote"],
    ):
        _call(cmd, root, env)
    shutil.copytree(DEMO_DATA, root / "data")
    (root / ".gitignore").write_text("/data\n.loraflow/\nmlflow.db\nmlartifacts/\n")
    _call(["git", "add", "-A"], root, env)
    _call(["git", "commit", "-q", "-m", "init"], root, env)


def run(*, steps: int = 50, eval_examples: int = 20) -> Figure:
    require_demo_assets()
    with tempfile.TemporaryDirectory(prefix="bench-rerun-") as tmp:
        root = Path(tmp) / "project"
        env = worker_env({"PREFECT_HOME": str(root / ".loraflow" / "prefect")})
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PREFECT_API_URL"):
            env.pop(key, None)
        scratch_project(root, env)
        Path(env["PREFECT_HOME"]).mkdir(parents=True)
        config = yaml.safe_load(DEMO_CONFIG.read_text())
        config["base_model"] = str(DEMO_BASE)
        config["training"]["max_steps"] = steps
        config["evaluation"]["max_examples"] = eval_examples
        config["registry"]["model_name"] = "bench-rerun"
        (root / "run.yaml").write_text(yaml.safe_dump(config))
        cmd = [sys.executable, "-m", "flows.cli", "run", "run.yaml", "--skip-unchanged"]
        seconds, outputs = [], []
        for _ in range(2):
            started = time.perf_counter()
            outputs.append(_call(cmd, root, env))
            seconds.append(time.perf_counter() - started)
    first, rerun = seconds
    if "skipped" not in outputs[1] or "promoted to champion" not in outputs[0]:
        raise BenchError("rerun benchmark: expected a promoted first run and a skipped rerun")
    skip_line = next(line for line in outputs[1].splitlines() if "skipped" in line)
    return Figure(
        number=5,
        name="unchanged rerun vs first run (wall time, `loraflow run --skip-unchanged`)",
        measured=f"{rerun:.1f} s vs {first:.1f} s ({rerun / first:.2f}x)",
        goal="report",
        command="python -m bench --only rerun",
        details={"first_seconds": first, "rerun_seconds": rerun, "ratio": rerun / first},
        lines=[
            f"scratch git+DVC project, demo config with {steps} steps and {eval_examples} eval "
            f"examples, ephemeral Prefect, sqlite MLflow, local DVC remote",
            f"first run (trains, evaluates, registers, promotes): {first:.1f} s",
            f"unchanged rerun: {rerun:.1f} s: {skip_line.strip()}",
        ],
    )
