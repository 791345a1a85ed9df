"""Figure 5: wall time of an unchanged rerun vs the first run of `loraflow run --skip-unchanged`.

A scratch project (git + DVC, local DVC remote, the demo data) with the embedded defaults:
Prefect's temporary API, MLflow on sqlite, no servers. The first run trains, evaluates,
registers and promotes (the demo config as shipped, 3000 steps); each rerun of the same command
on unchanged data, config and base model finds them equal to the champion's at the finetune
flow's first stage (tasks.retrain_check) and records the skip. All are whole CLI processes; the
rerun figure is the median of RERUNS, with the CPU seconds it took (the CLI and Prefect's
temporary API), which a busy machine moves less.
"""

from __future__ import annotations

import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.assets import DEMO_BASE, DEMO_CONFIG, DEMO_DATA, require_demo_assets
from bench.measure import Figure
from bench.workers import BenchError, worker_env

GOAL_SECONDS, GOAL_RATIO = 8.0, 0.05
RERUNS = 3


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


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


def run(*, steps: int | None = None, eval_examples: int | None = None) -> Figure:
    """`steps` / `eval_examples` shorten the first run (default: the demo config as shipped)."""
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
        if steps is not None:
            config["training"]["max_steps"] = steps
        if eval_examples is not None:
            config["evaluation"]["max_examples"] = eval_examples
        config["registry"]["model_name"] = "bench-rerun"
        (root / "run.yaml").write_text(yaml.safe_dump(config))
        loraflow = str(Path(sys.executable).parent / "loraflow")  # the installed command
        cmd = [loraflow, "run", "run.yaml", "--skip-unchanged"]
        seconds, cpu, outputs = [], [], []
        for _ in range(1 + RERUNS):
            started, cpu_before = time.perf_counter(), _children_cpu()
            outputs.append(_call(cmd, root, env))
            seconds.append(time.perf_counter() - started)
            cpu.append(_children_cpu() - cpu_before)
    first, reruns = seconds[0], seconds[1:]
    if "promoted to champion" not in outputs[0] or not all("skipped" in o for o in outputs[1:]):
        raise BenchError("rerun benchmark: expected a promoted first run and skipped reruns")
    rerun, rerun_cpu = statistics.median(reruns), statistics.median(cpu[1:])
    skip_line = next(line for line in outputs[1].splitlines() if "skipped" in line)
    ratio = rerun / first
    setup = "demo config" + (f", {steps} steps" if steps is not None else " as shipped")
    if eval_examples is not None:
        setup += f", {eval_examples} eval examples"
    return Figure(
        number=5,
        name="unchanged rerun vs first run (wall time, `loraflow run --skip-unchanged`)",
        measured=f"{rerun:.1f} s vs {first:.1f} s ({ratio:.3f}x); rerun CPU {rerun_cpu:.1f} s",
        goal=f"<= {GOAL_SECONDS:g} s and <= {GOAL_RATIO}x",
        command="python -m bench --only rerun",
        details={
            "first_seconds": first,
            "rerun_seconds": rerun,
            "rerun_seconds_all": reruns,
            "rerun_cpu_seconds": rerun_cpu,
            "ratio": ratio,
            "goal_met": rerun <= GOAL_SECONDS and ratio <= GOAL_RATIO,
        },
        lines=[
            f"scratch git+DVC project, {setup}, temporary Prefect API, sqlite MLflow, "
            "local DVC remote",
            f"first run (trains, evaluates, registers, promotes): {first:.1f} s",
            f"unchanged reruns: {', '.join(f'{s:.1f}' for s in reruns)} s (median {rerun:.1f} s, "
            f"CPU {rerun_cpu:.1f} s with its Prefect API): {skip_line.strip()}",
        ],
    )
