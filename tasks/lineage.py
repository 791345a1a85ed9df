"""Lineage of a run: code version, base model hash, package versions.

The numeric environment (`env.*`) is not collected here: training takes it where it runs
(models.train.TrainResult.environment), which for a dispatched training is another machine.
"""

from __future__ import annotations

import subprocess
from importlib import metadata

from prefect import task

from models.config import LoraflowConfig
from models.hashing import weights_sha256
from models.loading import is_local

PACKAGES = ("torch", "transformers", "peft", "accelerate", "mlflow", "prefect", "dvc", "loraflow")


def git_commit(cwd: str = ".") -> tuple[str, bool]:
    """(HEAD commit, working tree dirty?) or ('unknown', False) outside a git checkout."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False
    return head, bool(status.strip())


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that decide what a run computes."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@task(name="collect-lineage")
def collect_lineage(*, base_model: str) -> dict[str, str]:
    """Tags that say how a run was made: git commit, base weights hash, package versions.
    The hardware and numeric environment tags come with the trained adapter (`env.*`)."""
    commit, dirty = git_commit()
    tags = {
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "base_model": base_model,
        # A hub id is identified by its name (and revision); local weights by their hash.
        "base_model_sha256": weights_sha256(base_model) if is_local(base_model) else "hub",
    }
    tags.update({f"version.{k}": v for k, v in package_versions().items()})
    return tags


# The lineage tags an export manifest carries: where the exported weights came from.
LINEAGE_TAGS = (
    "data_md5",
    "git_commit",
    "config_sha256",
    "base_model",
    "base_model_sha256",
    "method",
    "seed",
    "adapter_sha256",
)


def run_tags(config: LoraflowConfig, lineage: dict[str, str], data_md5: str) -> dict[str, str]:
    """Lineage tags carried by the MLflow run and the model version."""
    return {
        **lineage,
        "data_md5": data_md5,
        "config_sha256": config.sha256(),
        "method": config.adapter.method,
        "seed": str(config.adapter.seed),
    }
