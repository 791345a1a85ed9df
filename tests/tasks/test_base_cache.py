"""Base models on S3 against a real S3 API on loopback (moto's server mode): downloaded once,
verified, reused; an export's prefix as it is; one-line errors."""

import json
import uuid

import boto3
import pytest

from tasks.base_model import fetch_base_model
from tasks.lib import s3
from tasks.lib.base_cache import fetch_s3_base
from tests.tasks.test_s3 import Requests

MODEL_FILES = {
    "config.json": b'{"model_type": "llama"}',
    "model.safetensors": b"\x00weights\x01" * 1000,
    "tokenizer/tokenizer.json": b"{}",
}


def put_model(files=MODEL_FILES, **extra) -> str:
    bucket = f"bases-{uuid.uuid4().hex[:10]}"
    c = boto3.client("s3")
    c.create_bucket(Bucket=bucket)
    for name, body in files.items():
        c.put_object(Bucket=bucket, Key=f"team/base/{name}", Body=body, **extra)
    return f"s3://{bucket}/team/base/"


def local_files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_plain_prefix_is_downloaded_once_verified_and_reused(s3_env, tmp_path):
    uri = put_model()
    c = s3.client()
    requests = Requests(c)
    local = fetch_s3_base(uri, tmp_path / "cache", s3=c)
    assert local_files(local) == MODEL_FILES
    gets = [key for op, key in requests.calls if op == "GetObject"]
    assert len(gets) == 4  # the manifest looked for, then the three files
    requests.calls.clear()
    assert fetch_s3_base(uri, tmp_path / "cache", s3=c) == local
    assert [op for op, _ in requests.calls if op == "GetObject"] == ["GetObject"]  # manifest only
    assert not [p for p in (tmp_path / "cache").iterdir() if p != local]  # no leftovers

    # A changed object is a new cache entry, never a stale hit.
    bucket = uri[5:].split("/")[0]
    boto3.client("s3").put_object(Bucket=bucket, Key="team/base/config.json", Body=b"{}")
    changed = fetch_s3_base(uri, tmp_path / "cache", s3=c)
    assert changed != local and (changed / "config.json").read_bytes() == b"{}"


def test_an_export_prefix_works_as_is(s3_env, tmp_path):
    """What `loraflow export` writes (tasks.lib.s3.upload_directory, manifest last)."""
    src = tmp_path / "merged"
    for name, body in MODEL_FILES.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(body)
    bucket = f"exports-{uuid.uuid4().hex[:10]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    location = s3.parse_s3_uri(f"s3://{bucket}/team/m/v1")
    s3.upload_directory(s3.client(), src, location, lineage={"version": "1"})
    local = fetch_base_model.fn(base_model=location.uri(), cache_dir=str(tmp_path / "cache"))
    assert local_files(tmp_path / "cache" / local) == MODEL_FILES  # the manifest is not a file


def test_a_local_directory_or_hub_id_is_returned_as_is(tmp_path):
    assert fetch_base_model.fn(base_model=str(tmp_path)) == str(tmp_path)
    assert (
        fetch_base_model.fn(base_model="HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    )


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_prefix_without_config_json_is_refused(s3_env, tmp_path):
    uri = put_model({"model.safetensors": b"w"})
    with pytest.raises(s3.S3Error) as e:
        fetch_s3_base(uri, tmp_path)
    assert one_line(e) == (
        f"{uri.rstrip('/')}: no config.json under this prefix (not a model directory)"
    )
    assert not list(tmp_path.iterdir())


def test_a_checksum_mismatch_is_refused_and_nothing_is_cached(s3_env, tmp_path):
    # The object's recorded sha256 (as tasks.lib.s3 records it) says other bytes.
    uri = put_model(Metadata={s3.SHA_META: "0" * 64})
    with pytest.raises(s3.S3Error) as e:
        fetch_s3_base(uri, tmp_path)
    assert "sha256 mismatch" in one_line(e) and one_line(e).startswith(uri)
    assert not list(tmp_path.iterdir())

    # An export whose manifest no longer matches an object (overwritten after the export).
    bucket = f"exports-{uuid.uuid4().hex[:10]}"
    c = boto3.client("s3")
    c.create_bucket(Bucket=bucket)
    manifest = {"format": 1, "lineage": {}, "files": []}
    for name, body in MODEL_FILES.items():
        c.put_object(Bucket=bucket, Key=f"m/{name}", Body=body)
        manifest["files"].append({"key": f"m/{name}", "size": len(body), "sha256": "f" * 64})
    c.put_object(Bucket=bucket, Key="m/manifest.json", Body=json.dumps(manifest).encode())
    with pytest.raises(s3.S3Error) as e:
        fetch_s3_base(f"s3://{bucket}/m", tmp_path)
    assert "sha256 mismatch" in one_line(e)
    assert not list(tmp_path.iterdir())


def test_missing_credentials_are_named_in_one_line(s3_server, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(s3.S3Error) as e:
        fetch_s3_base("s3://some-bucket/base/", tmp_path / "cache")
    assert one_line(e) == (
        "s3://some-bucket/base: no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_PROFILE)"
    )
