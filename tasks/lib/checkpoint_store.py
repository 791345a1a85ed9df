"""Training checkpoints that survive the worker: a local (or shared) directory, or an S3 prefix.

Checkpoints of one training live under a key derived from what determines the result (config
sha256, data md5, base weights sha256), so a Prefect retry and a new flow run with the same
inputs find them, and different inputs never do.

Local store: the Trainer writes straight into `<store>/<key>/checkpoint-<step>`.
S3 store: the Trainer writes into a scratch directory; every finished checkpoint is uploaded to
`s3://bucket/prefix/<key>/checkpoint-<step>/` with its manifest.json last (a prefix without the
manifest is incomplete and ignored), and older remote checkpoints are deleted after that.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from models.training.checkpoints import CHECKPOINT_DONE, checkpoint_step, latest_checkpoint
from tasks.lib import s3 as s3io
from tasks.runtime import logger

_STEP_MANIFEST = re.compile(r"checkpoint-(\d+)/" + re.escape(s3io.MANIFEST) + "$")


def checkpoint_key(*, config_sha256: str, data_md5: str, base_model_sha256: str) -> str:
    """Identity of a training's checkpoints: equal inputs, equal key."""
    text = f"{config_sha256}\n{data_md5}\n{base_model_sha256}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def training_key(tags: dict[str, str]) -> str:
    """The checkpoint key of a run from its lineage tags (config, data and base weights)."""
    return checkpoint_key(
        config_sha256=tags["config_sha256"],
        data_md5=tags["data_md5"],
        base_model_sha256=tags["base_model_sha256"],
    )


@dataclass(frozen=True)
class CheckpointStore:
    """Where checkpoints of training `key` are kept; `local_dir` is what the Trainer writes."""

    store: str  # a directory, or s3://bucket/prefix
    key: str
    local_dir: Path

    @property
    def remote(self) -> s3io.S3Location | None:
        if not self.store.startswith("s3://"):
            return None
        base = s3io.parse_s3_uri(self.store)
        return s3io.S3Location(base.bucket, base.key(self.key))

    def describe(self) -> str:
        location = self.remote
        return location.uri() if location else str(self.local_dir)


def open_store(*, store: str, key: str, scratch: str | Path) -> CheckpointStore:
    """The store for `key`: local checkpoints go to <store>/<key>, S3 ones are staged in scratch."""
    if store.startswith("s3://"):
        return CheckpointStore(store, key, Path(scratch) / "checkpoints" / key)
    return CheckpointStore(store, key, Path(store) / key)


def restore(store: CheckpointStore) -> int:
    """Make the newest complete checkpoint available locally; returns its step (0 = none)."""
    location = store.remote
    if location is None:
        found = latest_checkpoint(store.local_dir)
        return checkpoint_step(found) if found else 0
    s3 = s3io.client()
    steps = _remote_steps(s3, location)
    if not steps:
        return 0
    step = max(steps)
    target = store.local_dir / f"checkpoint-{step}"
    if latest_checkpoint(store.local_dir) != target:
        if target.exists():
            shutil.rmtree(target)
        s3io.download_verified(s3, _step_location(location, step), target)
        (target / CHECKPOINT_DONE).write_text(f"{step}\n")
    logger().info("checkpoint of step %d restored from %s", step, location.uri())
    return step


def save(store: CheckpointStore, checkpoint: Path) -> None:
    """After the Trainer finished writing `checkpoint`: copy it to a remote store (if any)."""
    location = store.remote
    step = checkpoint_step(checkpoint)
    if location is None:
        logger().info("checkpoint of step %d written to %s", step, checkpoint)
        return
    s3 = s3io.client()
    s3io.upload_directory(
        s3, checkpoint, _step_location(location, step), lineage={"checkpoint_step": step}
    )
    for old in _remote_steps(s3, location):
        if old < step:
            _delete_prefix(s3, _step_location(location, old))
    logger().info("checkpoint of step %d uploaded to %s", step, location.uri())


def clear(store: CheckpointStore) -> None:
    """Drop every checkpoint of this training (after its adapter is safely registered)."""
    location = store.remote
    if location is not None:
        _delete_prefix(s3io.client(), location)
    shutil.rmtree(store.local_dir, ignore_errors=True)


def _step_location(location: s3io.S3Location, step: int) -> s3io.S3Location:
    return s3io.S3Location(location.bucket, location.key(f"checkpoint-{step}"))


def _list_keys(s3, location: s3io.S3Location) -> list[str]:
    return [obj["Key"] for obj in s3io.list_objects(s3, location)]


def _remote_steps(s3, location: s3io.S3Location) -> list[int]:
    """Steps of the complete checkpoints (manifest present) under location."""
    prefix = location.key("")
    steps = []
    for key in _list_keys(s3, location):
        match = _STEP_MANIFEST.match(key[len(prefix) :])
        if match:
            steps.append(int(match[1]))
    return steps


def _delete_prefix(s3, location: s3io.S3Location) -> None:
    keys = _list_keys(s3, location)
    # The manifest first: a half-deleted checkpoint must not look complete.
    keys.sort(key=lambda k: not k.endswith("/" + s3io.MANIFEST))
    for key in keys:
        try:
            s3.delete_object(Bucket=location.bucket, Key=key)
        except (ClientError, BotoCoreError) as e:
            raise s3io.describe(e, f"s3://{location.bucket}/{key}", s3.meta.endpoint_url) from None
