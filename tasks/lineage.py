"""Lineage of a run: code version, base model hash, package versions.

The numeric environment (`env.*`) is not collected here: training takes it where it runs
(models.training.train.TrainResult.environment), which for a dispatched training is another machine.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import yaml
from prefect import task

from models.base_model.identity import base_model_sha256
from models.base_model.paths import canonical_base
from models.config.run import LoraflowConfig
from models.hashing import FileHashes, dvc_dir_md5
from tasks.data import DvcError, dvc_file_of, find_dvc_repo, read_dvc_md5
from tasks.lib.s3 import is_s3_uri

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


# File digests of base weights and data, remembered by size and mtime between runs (runtime state
# beside the project's other state in .loraflow/).
FILE_HASHES = Path(".loraflow") / "file-hashes.json"


@contextlib.contextmanager
def remembered_hashes() -> Iterator[FileHashes]:
    """The project's file-hash table, saved when the block ends (whatever it found)."""
    hashes = FileHashes(FILE_HASHES)
    try:
        yield hashes
    finally:
        hashes.save()


@task(name="hash-inputs")
def hash_inputs(config: LoraflowConfig) -> dict[str, str] | None:
    """The lineage keys a run of `config` would record (data md5, config sha256, base model
    sha256), read without dvc and without loading a model: for deciding "unchanged" in seconds
    (tasks.retrain_check).

    The data md5 is computed as `dvc add` computes it and must equal the md5 the directory's
    .dvc file records; otherwise (data not versioned as it stands, no .dvc file, no DVC repo)
    None: the run must version its data first, which the flow does. None too where the inputs
    are elsewhere until the run fetches them: data from data.source (a local copy may be stale)
    and an s3:// base (its weights are hashed once downloaded).
    """
    if config.data.source or is_s3_uri(config.base_model):
        return None
    data = Path(config.data.path).resolve()
    dvc_file = dvc_file_of(data)
    try:
        find_dvc_repo(data)
        recorded = read_dvc_md5(dvc_file) if dvc_file.is_file() else None
    except (DvcError, OSError, LookupError, TypeError, yaml.YAMLError):
        return None
    if recorded is None or not data.is_dir():
        return None
    try:
        with remembered_hashes() as hashes:
            data_md5 = dvc_dir_md5(data, hashes)
            if data_md5 != recorded:
                return None
            base_sha256 = base_model_sha256(canonical_base(config.base_model), hashes)
    except OSError:
        return None  # the flow's checks say what is missing, in their words
    return {
        "data_md5": data_md5,
        "config_sha256": config.sha256(),
        "base_model_sha256": base_sha256,
    }


@task(name="collect-lineage")
def collect_lineage(*, base_model: str, weights_dir: str | None = None) -> dict[str, str]:
    """Tags that say how a run was made: git commit, base weights hash, package versions.
    The hardware and numeric environment tags come with the trained adapter (`env.*`).
    weights_dir: where the base's weights are read from when not `base_model` itself (the local
    copy of an s3:// base); `base_model` is recorded as given."""
    commit, dirty = git_commit()
    tags = {
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "base_model": base_model,
        "base_model_sha256": _remembered_base_sha256(weights_dir or base_model),
    }
    tags.update({f"version.{k}": v for k, v in package_versions().items()})
    return tags


def _remembered_base_sha256(base_model: str) -> str:
    with remembered_hashes() as hashes:
        return base_model_sha256(base_model, hashes)


# The lineage tags an export manifest carries: where the exported weights came from.
MANIFEST_TAGS = (
    "data_md5",
    "git_commit",
    "config_sha256",
    "base_model",
    "base_model_sha256",
    "method",
    "seed",
    "adapter_sha256",
    # the prepared train split's key (models.data.prepared): the data md5 of its file, the
    # tokenizer, the template and the data settings the tokens were made from
    "data_prepared_key",
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
