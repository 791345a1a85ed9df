"""Checkpoints kept in S3 (an S3 API server on loopback): upload, restore into a new scratch
directory (another worker), clean-up."""

import boto3

from models.training.checkpoints import CHECKPOINT_DONE
from tasks.lib import checkpoint_store as checkpoints


def fake_checkpoint(root, step, payload):
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(payload)
    (path / "optimizer.pt").write_bytes(payload * 2)
    (path / CHECKPOINT_DONE).write_text(f"{step}\n")
    return path


def test_s3_store_keeps_the_newest_checkpoint_for_another_worker(s3_env, tmp_path):
    s3 = boto3.client("s3", endpoint_url=s3_env)
    s3.create_bucket(Bucket="ckpt")
    key = checkpoints.checkpoint_key(config_sha256="c", data_md5="d", base_model_sha256="b")
    worker_a = checkpoints.open_store(store="s3://ckpt/runs", key=key, scratch=tmp_path / "a")
    assert checkpoints.restore(worker_a) == 0  # nothing yet

    checkpoints.save(worker_a, fake_checkpoint(worker_a.local_dir, 5, b"five"))
    checkpoints.save(worker_a, fake_checkpoint(worker_a.local_dir, 10, b"ten"))
    # A checkpoint whose upload was cut short (no manifest) is not a candidate.
    s3.put_object(Bucket="ckpt", Key=f"runs/{key}/checkpoint-15/optimizer.pt", Body=b"partial")
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket="ckpt")["Contents"]}
    assert not any("checkpoint-5/" in k for k in listed)  # older ones are dropped remotely

    worker_b = checkpoints.open_store(store="s3://ckpt/runs", key=key, scratch=tmp_path / "b")
    assert checkpoints.restore(worker_b) == 10
    restored = worker_b.local_dir / "checkpoint-10"
    assert (restored / "adapter_model.safetensors").read_bytes() == b"ten"
    assert (restored / "optimizer.pt").read_bytes() == b"tenten"
    assert (restored / CHECKPOINT_DONE).is_file()

    other = checkpoints.checkpoint_key(config_sha256="c2", data_md5="d", base_model_sha256="b")
    assert other != key
    assert (
        checkpoints.restore(
            checkpoints.open_store(store="s3://ckpt/runs", key=other, scratch=tmp_path / "c")
        )
        == 0
    )

    checkpoints.clear(worker_b)
    assert s3.list_objects_v2(Bucket="ckpt", Prefix=f"runs/{key}/")["KeyCount"] == 0
    assert not worker_b.local_dir.exists()


def test_local_store_is_the_trainer_directory(tmp_path):
    store = checkpoints.open_store(store=str(tmp_path / "store"), key="k", scratch=tmp_path / "x")
    assert store.local_dir == tmp_path / "store" / "k"
    fake_checkpoint(store.local_dir, 3, b"x")
    (store.local_dir / "checkpoint-6").mkdir()  # cut short: no completion marker
    assert checkpoints.restore(store) == 3
    checkpoints.clear(store)
    assert not store.local_dir.exists()
