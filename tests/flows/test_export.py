"""Merge-and-export against a real S3 API on loopback (moto's server mode)."""

import uuid

import boto3
import pytest
import torch

from models.config.run import ExportConfig
from tasks.lib import s3
from tests.tasks.test_registry import trained_adapter


def new_bucket() -> str:
    name = f"exports-{uuid.uuid4().hex[:10]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


class RequestCounter:
    """Counts the S3 operations every client made by tasks.lib.s3.client sends."""

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        make = s3.client

        def counting_client(*args, **kwargs):
            c = make(*args, **kwargs)
            c.meta.events.register("before-call.s3", self.record)
            return c

        monkeypatch.setattr(s3, "client", counting_client)

    def record(self, model, **kwargs):
        self.calls.append(model.name)

    def writes(self) -> list[str]:
        return [c for c in self.calls if c in ("PutObject", "UploadPart", "CreateMultipartUpload")]


@pytest.fixture
def registered(project, tiny_base, prefect_harness):
    """A trained adapter registered as version 1 of `exp` (alias champion)."""
    from tasks.registry import register_adapter
    from tasks.tracking import client, open_run

    ids, logits = trained_adapter(tiny_base, project / "adapter")
    run_id = open_run.fn(
        experiment="e", run_name="r", config={}, config_yaml="{}\n", tags={"data_md5": "d" * 32}
    )
    version = register_adapter.fn(
        run_id=run_id,
        adapter_dir=str(project / "adapter"),
        base_model=str(tiny_base),
        model_name="exp",
        tags={"data_md5": "d" * 32, "base_model": str(tiny_base), "adapter_sha256": "a" * 64},
        max_new_tokens=4,
    )
    client().set_registered_model_alias("exp", "champion", version)
    return ids, logits


def test_export_round_trip_idempotent_and_recorded(registered, s3_env, tmp_path, monkeypatch):
    from flows.export import export_model
    from tasks.tracking import client

    ids, adapter_logits = registered
    bucket = new_bucket()
    counter = RequestCounter(monkeypatch)
    export = ExportConfig(
        enabled=True,
        to=f"s3://{bucket}/team",
        dtype="float32",
        max_shard_size="200KB",
        multipart_threshold_mb=1,
    )
    first = export_model("models:/exp@champion", export)
    assert first["uri"] == f"s3://{bucket}/team/exp/v1"
    assert "manifest.json" in first["uploaded"] and first["files"] > 3
    assert counter.writes()

    # Re-export of the same version: nothing is sent again.
    counter.calls.clear()
    second = export_model("models:/exp/1", export)
    assert second["uploaded"] == [] and counter.writes() == []
    assert second["manifest_sha256"] == first["manifest_sha256"]

    # Download with only the manifest as a guide, verify every hash, load with transformers.
    location = s3.parse_s3_uri(first["uri"])
    manifest = s3.download_verified(boto3.client("s3"), location, tmp_path / "dl")
    assert manifest["lineage"]["version"] == "1" and manifest["lineage"]["data_md5"] == "d" * 32
    shards = [f["key"] for f in manifest["files"] if f["key"].endswith(".safetensors")]
    assert len(shards) > 1  # max_shard_size was honoured
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "dl")
    merged.eval()
    with torch.no_grad():
        logits = merged(**ids).logits
    assert (logits - adapter_logits).abs().max().item() < 1e-4

    tags = client().get_model_version("exp", "1").tags
    assert tags["export.uri"] == first["uri"]
    assert tags["export.manifest_sha256"] == first["manifest_sha256"]


def test_shards_deleted_as_uploaded_keep_local_disk_at_one_shard(
    registered, s3_env, tmp_path, monkeypatch
):
    """With export.delete_local_shards each shard is sent as soon as it is written and then
    deleted: no upload ever starts while a second shard is on local disk, nothing is left,
    and the export is the one the two-stage path makes (same manifest)."""
    from flows.export import export_model

    bucket = new_bucket()
    counter = RequestCounter(monkeypatch)
    work = tmp_path / "work"
    on_disk = []
    counter.record = lambda model, **kw: on_disk.append(len(list(work.rglob("*.safetensors"))))
    export = ExportConfig(
        enabled=True,
        to=f"s3://{bucket}/team",
        dtype="float32",
        max_shard_size="200KB",
        delete_local_shards=True,
    )
    streamed = export_model("models:/exp@champion", export, work_dir=str(work))
    assert streamed["files"] > 3 and on_disk and max(on_disk) == 1
    assert not [p for p in work.rglob("*") if p.is_file()]  # every file deleted once sent

    kept = ExportConfig(**{**export.model_dump(), "delete_local_shards": False})
    again = export_model("models:/exp@champion", kept, work_dir=str(tmp_path / "kept"))
    assert again["uploaded"] == [] and again["manifest_sha256"] == streamed["manifest_sha256"]


def test_interrupted_upload_resumes_without_resending(s3_env, tmp_path):
    bucket = new_bucket()
    src = tmp_path / "model"
    src.mkdir()
    for i in range(4):
        (src / f"part-{i}.bin").write_bytes(bytes([i]) * (300_000 + i))
    location = s3.S3Location(bucket, "m/v1")
    client = s3.client()

    def die_after_two(name, done=[]):  # noqa: B006 - counts across calls on purpose
        done.append(name)
        if len(done) == 2:
            raise KeyboardInterrupt("killed mid-export")

    with pytest.raises(KeyboardInterrupt):
        s3.upload_directory(client, src, location, lineage={}, after_file=die_after_two)
    with pytest.raises(s3.S3Error, match="no manifest.json, the export is incomplete"):
        s3.download_verified(client, location, tmp_path / "partial")

    manifest, sent = s3.upload_directory(client, src, location, lineage={})
    assert sent == ["part-2.bin", "part-3.bin", "manifest.json"]
    assert len(manifest["files"]) == 4
    s3.download_verified(client, location, tmp_path / "full")
    assert (tmp_path / "full" / "part-3.bin").read_bytes() == (src / "part-3.bin").read_bytes()


def test_missing_bucket_unreachable_endpoint_and_unknown_versions(s3_env, monkeypatch, project):
    from tasks.registry import RegistryError, resolve_version

    with pytest.raises(s3.S3Error, match=r"s3://no-such-bucket-x: bucket does not exist"):
        s3.check_bucket(s3.client(), s3.parse_s3_uri("s3://no-such-bucket-x/p"))
    with pytest.raises(s3.S3Error, match="is not an s3://bucket/prefix URI"):
        s3.parse_s3_uri("https://example/x")
    with pytest.raises(RegistryError, match="registered model 'ghost' does not exist"):
        resolve_version("models:/ghost@champion")
    with pytest.raises(RegistryError, match="expected models:/<name>@<alias>"):
        resolve_version("ghost")
    from tests.conftest import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(s3.S3Error, match="cannot reach the S3 endpoint") as err:
        s3.check_bucket(s3.client(), s3.parse_s3_uri("s3://b/p"))
    assert err.value.retryable
    assert "testing-secret-value" not in str(err.value)


def test_wrong_credentials_are_named_without_leaking_them(monkeypatch):
    """A server that checks signatures (moto with auth on) refuses made-up credentials."""
    from tests.conftest import moto_server

    with moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as url:
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGKEY0000")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        with pytest.raises(s3.S3Error, match=r"^s3://guarded: credentials rejected at ") as err:
            s3.check_bucket(s3.client(), s3.parse_s3_uri("s3://guarded/exports"))
        assert not err.value.retryable
        assert "wrong-secret-value" not in str(err.value)
        assert "\n" not in str(err.value)
