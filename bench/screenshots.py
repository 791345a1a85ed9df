"""`make screenshots`: the demo run against a local stack, photographed for the README.

A Prefect server (its UI on) and an MLflow server (sqlite) start on free loopback ports, their
state in a fresh `.loraflow/screenshots/` (git-ignored). `loraflow run configs/demo.yaml` runs
against them, the demo as `make run` trains it (`--steps 300` for a quicker, worse adapter). Then
headless chromium (Debian's, driven by Playwright: tests/browser.py, as the UI tests use it)
opens the flow run's page (the task graph, then its artifacts) and the registered version's
page, and saves them as PNGs in docs/images/, quantized to 256 colours to stay small in git.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.team_stack import BIN, REPO, Processes, free_port, wait_http
from tests.browser import browser_page

STATE = REPO / ".loraflow" / "screenshots"
IMAGES = REPO / "docs" / "images"
CONFIG = REPO / "configs" / "demo.yaml"
MODEL = "loraflow-demo"  # configs/demo.yaml's registry.model_name
WIDTH, HEIGHT = 1400, 1150


def stack_env(prefect_port: int, mlflow_port: int) -> dict[str, str]:
    env = {
        **os.environ,
        "PREFECT_HOME": str(STATE / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "true",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    # Anonymous local servers: no team credentials travel to them.
    for name in ("PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(name, None)
    return env


def start_stack(procs: Processes, prefect_port: int, mlflow_port: int, env: dict) -> None:
    prefect, prefect_log = procs.start(
        "prefect-server",
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
         "--port", str(prefect_port)],
        env,
        STATE,
    )  # fmt: skip
    mlflow, mlflow_log = procs.start(
        "mlflow-server",
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{STATE / 'mlflow.db'}",
         "--artifacts-destination", str(STATE / "mlartifacts")],
        env,
        STATE,
    )  # fmt: skip
    wait_http(f"http://127.0.0.1:{prefect_port}/api/health", prefect, prefect_log)
    wait_http(f"http://127.0.0.1:{mlflow_port}/health", mlflow, mlflow_log)


def run_demo(env: dict, steps: int | None, overrides: list[str]) -> None:
    cmd = [str(BIN / "loraflow"), "run", str(CONFIG.relative_to(REPO))]
    if steps is not None:
        overrides = [f"training.max_steps={steps}", *overrides]
    for override in overrides:
        cmd += ["--set", override]
    print("$ loraflow", " ".join(cmd[1:]), flush=True)
    code = subprocess.run(cmd, env=env, cwd=REPO).returncode
    if code != 0:
        raise RuntimeError(f"the demo run failed (exit {code}); the servers' logs: {STATE}")


def latest_flow_run(env: dict) -> str:
    """The id of the newest flow run on the stack's Prefect server."""
    os.environ["PREFECT_API_URL"] = env["PREFECT_API_URL"]
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)
    return str(run.id)


def latest_version(env: dict) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    (version,) = client.search_model_versions(
        f"name='{MODEL}'", order_by=["version_number DESC"], max_results=1
    )
    return str(version.version)


def save_small(png: Path) -> None:
    """256 colours: a UI page stays sharp and shrinks to a fraction of its size."""
    from PIL import Image

    with Image.open(png) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(png, optimize=True)


def photograph(prefect_url: str, flow_run: str, mlflow_url: str, version: str) -> list[Path]:
    """The flow run's page (task graph above, its artifacts tab below) and the version's page."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    prefect_png = IMAGES / "prefect-flow-run.png"
    mlflow_png = IMAGES / "mlflow-model-version.png"
    with browser_page(width=WIDTH, height=HEIGHT) as page:
        page.goto(f"{prefect_url}/runs/flow-run/{flow_run}")
        page.get_by_text("Completed", exact=True).first.wait_for(timeout=120_000)
        page.get_by_text("Artifacts", exact=True).click()
        page.get_by_text("evaluation", exact=True).first.wait_for(timeout=60_000)
        time.sleep(3)  # the graph draws on a canvas after its data arrives
        page.screenshot(path=str(prefect_png))
        page.goto(f"{mlflow_url}/#/models/{MODEL}/versions/{version}")
        page.get_by_text(f"Version {version}", exact=True).first.wait_for(timeout=120_000)
        page.get_by_text("Promotion:").first.wait_for(timeout=60_000)
        assistant = page.get_by_role("button", name="Close")  # MLflow's chat panel, if open
        if assistant.count():
            assistant.first.click()
        page.get_by_text("Inputs (", exact=False).first.click()  # the signature's inputs
        time.sleep(2)
        page.screenshot(path=str(mlflow_png))
    for png in (prefect_png, mlflow_png):
        save_small(png)
    return [prefect_png, mlflow_png]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.screenshots", description=__doc__)
    p.add_argument(
        "--steps", type=int, default=None, help="training steps (default: the demo's 3000)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another config override for the run, e.g. training.cpu_threads=1 on a busy machine",
    )
    args = p.parse_args(argv)
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir(parents=True)
    prefect_port, mlflow_port = free_port(), free_port()
    env = stack_env(prefect_port, mlflow_port)
    procs = Processes(STATE)
    try:
        start_stack(procs, prefect_port, mlflow_port, env)
        run_demo(env, args.steps, args.overrides)
        pictures = photograph(
            f"http://127.0.0.1:{prefect_port}",
            latest_flow_run(env),
            env["MLFLOW_TRACKING_URI"],
            latest_version(env),
        )
    finally:
        procs.stop()
    for png in pictures:
        print(f"wrote {png.relative_to(REPO)} ({png.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
