"""Base models on S3 against a real S3 API on loopback (moto's server mode): downloaded once,
verified, reused; an export's prefix as it is; one-line errors."""

import json
import os
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


# What a registered version does at load (tasks.lib.base_cache.serving_base): the base it records
# or the caller's override, its weights checked against the recorded sha256.


def local_model(root, weights=b"\x00weights\x01" * 1000):
    root.mkdir(parents=True)
    (root / "config.json").write_bytes(b"{}")
    (root / "model.safetensors").write_bytes(weights)
    return root


def test_a_recorded_base_is_checked_and_a_warm_load_trusts_the_remembered_hashes(tmp_path):
    from models.base_model.identity import OtherBaseError
    from models.hashing import FileHashes, weights_sha256
    from tasks.lib.base_cache import base_hashes_path, serving_base

    base = local_model(tmp_path / "base")
    recorded = weights_sha256(base)
    cache = tmp_path / "cache" / "s3-bases"
    assert serving_base(str(base), recorded, cache_dir=cache) == str(base)
    table = base_hashes_path(cache)
    assert table == tmp_path / "cache" / "base-hashes.json"

    # A warm load reads the table, not the weights: a remembered digest that lies is believed.
    remembered = FileHashes(table)
    (key,) = remembered.table
    remembered.table[key][3] = "0" * 64
    remembered.changed = True
    remembered.save()
    with pytest.raises(OtherBaseError) as e:
        serving_base(str(base), recorded, cache_dir=cache)
    assert recorded in one_line(e)
    # Touched weights are read again (their mtime changed), and they are the recorded ones.
    st = (base / "model.safetensors").stat()
    os.utime(base / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert serving_base(str(base), recorded, cache_dir=cache) == str(base)


def test_other_weights_are_refused_in_one_line_unless_allowed(tmp_path):
    from models.base_model.identity import OtherBaseError
    from models.hashing import weights_sha256
    from tasks.lib.base_cache import serving_base

    trained = weights_sha256(local_model(tmp_path / "trained"))
    other = local_model(tmp_path / "other", weights=b"other weights")
    found = weights_sha256(other)
    with pytest.raises(OtherBaseError) as e:
        serving_base(str(other), trained, cache_dir=tmp_path / "cache")
    assert one_line(e) == (
        f"base model {other}: weights sha256 {found} differ from the recorded base_model_sha256 "
        f"{trained} this adapter was trained on; load the base it was trained on, or pass "
        'model_config={"allow_other_base": true} to use these weights anyway'
    )
    assert serving_base(str(other), trained, allow_other=True, cache_dir=tmp_path) == str(other)
    # A hub id is identified by its name (the lineage records "hub"): nothing to compare.
    assert serving_base(str(other), "hub", cache_dir=tmp_path / "cache") == str(other)
    assert serving_base("org/some-model", "hub", cache_dir=tmp_path / "cache") == "org/some-model"


def test_a_base_that_is_not_here_names_it_and_the_override(tmp_path, monkeypatch):
    from tasks.lib.base_cache import MissingBaseError, serving_base

    gone = tmp_path / "trainer" / "base"
    with pytest.raises(MissingBaseError) as e:
        serving_base(str(gone), "0" * 64, cache_dir=tmp_path / "cache")
    assert one_line(e) == (
        f"base model {gone}: no such directory on this machine; pass model_config="
        '{"base_model": "<directory, hub id or s3:// URI>"} to load it from where it is'
    )
    with pytest.raises(MissingBaseError) as e:
        serving_base("", "0" * 64, cache_dir=tmp_path / "cache")
    assert "records no base model" in one_line(e)
    # A relative path is taken from the working directory, as at training.
    base = local_model(tmp_path / "here" / "base")
    monkeypatch.chdir(tmp_path / "here")
    assert serving_base("./base", "", cache_dir=tmp_path / "cache") == str(base)
