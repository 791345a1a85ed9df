"""Data tasks: validate the JSONL splits, version the data directory with the DVC CLI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from prefect import task

from models.errors import LoraflowError
from tasks.lib.environment import QUIET_ENV
from tasks.runtime import IO_RETRIES, logger

MD5 = re.compile(r"^[0-9a-f]{32}(\.dir)?$")


class DvcError(LoraflowError):
    """The dvc CLI failed; the message names the command and repo."""

    retryable = True  # pushes go over the network


@dataclass(frozen=True)
class DataVersion:
    """A versioned data directory: its DVC md5 and where it lives."""

    md5: str
    path: str
    dvc_file: str
    repo: str


def find_dvc_repo(path: Path) -> Path:
    """The nearest directory at or above `path` that holds a `.dvc` directory."""
    path = path.resolve()
    for candidate in (path, *path.parents):
        if (candidate / ".dvc").is_dir():
            return candidate
    raise DvcError(f"{path}: not inside a DVC repository (run `dvc init` at the repo root)")


def dvc_env(repo: Path) -> dict[str, str]:
    """Environment for dvc: no analytics (QUIET_ENV), its site cache in the repo's runtime state."""
    env = {**QUIET_ENV, **os.environ}
    env.setdefault("DVC_SITE_CACHE_DIR", str(repo / ".loraflow" / "dvc-site-cache"))
    return env


def run_dvc(repo: Path, *args: str) -> str:
    """Run the dvc CLI in `repo`; failures become DvcError with dvc's own last error line."""
    # Pipelines that run at once in one checkout (a pool limit above 1) take turns on the repo's
    # lock; without --wait-for-lock the second gives up after 3 s.
    cmd = [sys.executable, "-m", "dvc", "--wait-for-lock", *args]
    proc = subprocess.run(cmd, cwd=repo, env=dvc_env(repo), capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "ERROR" in ln] or lines or ["no output"]
        raise DvcError(f"`dvc {' '.join(args)}` in {repo} failed: {errors[-1].strip()}")
    return proc.stdout


def dvc_file_of(data: Path) -> Path:
    """The .dvc file `dvc add` writes for a directory: beside it, named after it."""
    return data.with_name(f"{data.name}.dvc")


def read_dvc_md5(dvc_file: Path) -> str:
    """The md5 DVC recorded for the single output of a .dvc file."""
    meta = yaml.safe_load(dvc_file.read_text())
    return meta["outs"][0]["md5"]


@task(name="version-data")
def version_data(*, data_dir: str) -> DataVersion:
    """`dvc add` the data directory (content-addressed into the DVC cache) and return its md5."""
    data = Path(data_dir).resolve()
    repo = find_dvc_repo(data)
    rel = data.relative_to(repo).as_posix()
    run_dvc(repo, "add", rel)
    dvc_file = dvc_file_of(data)
    md5 = read_dvc_md5(dvc_file)
    logger().info("data directory %s versioned as md5 %s", rel, md5)
    return DataVersion(md5=md5, path=str(data), dvc_file=str(dvc_file), repo=str(repo))


def cache_version(data_dir: Path) -> str | None:
    """`dvc add` a directory that a committed .dvc file versions, outside any run: its bytes go
    into the DVC cache, so `dvc status` is clean (e.g. demo data just built on a fresh clone).
    Returns the md5, or None where no .dvc file or DVC repository versions it."""
    data = data_dir.resolve()
    if not dvc_file_of(data).is_file():
        return None
    try:
        repo = find_dvc_repo(data)
    except DvcError:
        return None
    run_dvc(repo, "add", data.relative_to(repo).as_posix())
    return read_dvc_md5(dvc_file_of(data))


@task(name="push-data", **IO_RETRIES)
def push_data(*, dataset: DataVersion, remote: str | None = None) -> None:
    """`dvc push` the versioned data to the remote (the repo's default unless named)."""
    args = ["push", Path(dataset.dvc_file).name] + (["--remote", remote] if remote else [])
    run_dvc(Path(dataset.repo), *args)
    logger().info("data md5 %s pushed to DVC remote %s", dataset.md5, remote or "(default)")


def _remote_settings(repo: Path, remote: str | None) -> tuple[str, dict[str, str]]:
    """(name, {option: value}) of the repo's remote `remote` (or its default), with a local
    remote's relative URL made absolute (DVC resolves it against the config's `.dvc/`)."""
    name = remote or run_dvc(repo, "remote", "default").strip()
    if not name:
        raise DvcError(f"{repo}: no DVC remote named and no default remote set")
    prefix = f"remote.{name}."
    settings = {}
    for line in run_dvc(repo, "config", "--list").splitlines():
        key, _, value = line.partition("=")
        if key.startswith(prefix):
            settings[key.removeprefix(prefix)] = value
    if "url" not in settings:
        raise DvcError(f"{repo}: DVC remote {name!r} is not configured")
    url = settings["url"]
    if "://" not in url and not Path(url).is_absolute():
        settings["url"] = str((repo / ".dvc" / url).resolve())
    return name, settings


@task(name="fetch-data-version", **IO_RETRIES)
def fetch_data_version(*, md5: str, repo: str = ".", remote: str | None = None) -> str:
    """The data version `md5` pulled from the DVC remote, whatever this checkout's data/ holds.

    Pulled into `<repo>/.loraflow/data-versions/<md5>/data` through a scratch DVC project
    (no git) that uses the repo's remote, so neither the working tree nor data.dvc change. A
    complete earlier pull is reused. Returns the data directory.
    """
    if not MD5.match(md5):  # it comes from a registry tag and becomes a directory name
        error = DvcError(f"data md5 {md5!r} is not an md5 (32 hex digits, optionally '.dir')")
        error.retryable = False
        raise error
    root = find_dvc_repo(Path(repo))
    key = md5.removesuffix(".dir")
    scratch = root / ".loraflow" / "data-versions" / key
    data = scratch / "data"
    done = scratch / "COMPLETE"
    if done.is_file():
        return str(data)
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    name, settings = _remote_settings(root, remote)
    run_dvc(scratch, "init", "--no-scm", "-q")
    run_dvc(scratch, "config", "core.analytics", "false")
    run_dvc(scratch, "remote", "add", "-d", name, settings.pop("url"))
    for option, value in settings.items():
        # --local: credentials from the repo's config.local stay in a config.local here too.
        run_dvc(scratch, "remote", "modify", "--local", name, option, value)
    meta = {"outs": [{"md5": md5, "hash": "md5", "path": "data"}]}
    (scratch / "data.dvc").write_text(yaml.safe_dump(meta))
    run_dvc(scratch, "pull", "data.dvc")
    done.write_text(md5 + "\n")
    logger().info("data md5 %s pulled from DVC remote %s into %s", md5, name, data)
    return str(data)
