"""Where Prefect workers take loraflow's flow code from: decided at deploy time, applied per run.

prefect.yaml runs `code_source` as its build step (on the machine running `prefect deploy`) and
`fetch_code` as the pull step of each flow run (on the worker), so a deployment never depends on
what a worker's environment happens to hold:
  - LORAFLOW_REPOSITORY (a git URL) at deploy time: every run clones that repository at the
    commit that was deployed into its own scratch directory (a process worker's new temporary
    directory, a fresh pod): the worker keeps nothing between runs, the pipelines take their
    data from data.source or the DVC remote (docs/team.md#new-data-for-the-nightly);
  - LORAFLOW_HOME: every deployment runs from that checkout, at the same path on every worker
    (the Docker image's is /app);
  - neither: they run from the checkout you deploy from, said in one line.
This module sits outside the flows/, tasks/ and models/ packages on purpose: the pull step runs
before the flow is loaded, and importing one of those packages from the worker's own install
would shadow the cloned code.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPOSITORY, HOME = "LORAFLOW_REPOSITORY", "LORAFLOW_HOME"
MARKER = "flows/finetune.py"  # a loraflow checkout has it


_SAID: set[str] = set()


def _say(line: str) -> None:
    # `prefect deploy --all` runs the build step once per deployment: say each thing once.
    if line not in _SAID:
        _SAID.add(line)
        print(line)


class DeployError(RuntimeError):
    """The deployment cannot say (or a worker cannot find) where the flow code is."""


def _git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DeployError(
            f"{REPOSITORY} is set but {cwd} is not a git checkout with a commit "
            f"(git {' '.join(args)}: {proc.stderr.strip().splitlines()[-1:]}); deploy from one"
        )
    return proc.stdout.strip()


def code_source() -> dict[str, str]:
    """Build step: {"directory": checkout the pipelines run from, "repository": git URL or "",
    "commit": deployed commit or ""}, with one line saying which."""
    here = Path.cwd()  # `prefect deploy` runs beside prefect.yaml: in the checkout
    home = os.environ.get(HOME, "").strip()
    directory = home or str(here)
    if not home:
        _say(
            f"{HOME} is not set: deployments run from this checkout, {here}, on every worker "
            f"(same path there); set {HOME} to the checkout's path on the workers, or "
            f"{REPOSITORY} to a git URL for every run to clone this commit"
        )
    repository = os.environ.get(REPOSITORY, "").strip()
    commit = ""
    if repository:
        commit = _git(here, "rev-parse", "HEAD")
        changed = _git(here, "status", "--porcelain", "--untracked-files=no")
        _say(
            f"runs clone {repository} at {commit[:12]}, each into a fresh directory"
            + (" (uncommitted changes here are not deployed)" if changed else "")
        )
    return {"directory": directory, "repository": repository, "commit": commit}


def fetch_code(directory: str = "", repository: str = "", commit: str = "") -> dict[str, str]:
    """Pull step: clone `repository` at `commit` into the run's working directory (if given),
    else use the checkout at `directory`; then work from there."""
    if repository:
        from prefect.deployments.steps import git_clone

        directory = git_clone(repository=repository, commit_sha=commit or None)["directory"]
    path = Path(directory).resolve()
    if not (path / MARKER).is_file():
        raise DeployError(
            f"no loraflow checkout at {path} on this worker ({MARKER} missing): deploy with "
            f"{HOME} set to the checkout's path on the workers, or {REPOSITORY} to a git URL"
        )
    os.chdir(path)
    return {"directory": str(path)}
