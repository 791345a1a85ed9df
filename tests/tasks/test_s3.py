"""tasks.lib.s3 against a real S3 API on loopback (moto's server mode)."""

import hashlib
import json
import uuid

import boto3
import pytest

from tasks.lib import s3

MB = 2**20


def new_bucket() -> str:
    name = f"s3-{uuid.uuid4().hex[:10]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Requests:
    """Every S3 operation one client sends, with its key, in order."""

    def __init__(self, client):
        self.calls: list[tuple[str, str]] = []
        client.meta.events.register("before-parameter-build.s3", self.record)

    def record(self, model, params, **kwargs):
        self.calls.append((model.name, params.get("Key", "")))

    def writes(self) -> list[tuple[str, str]]:
        kinds = ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload")
        return [c for c in self.calls if c[0] in kinds]


@pytest.mark.parametrize(
    ("uri", "bucket", "prefix"),
    [
        ("s3://b/team/models", "b", "team/models"),
        ("s3://b/team/models/", "b", "team/models"),
        ("s3://b", "b", ""),
        ("s3://b/", "b", ""),
    ],
)
def test_parse_s3_uri(uri, bucket, prefix):
    location = s3.parse_s3_uri(uri)
    assert (location.bucket, location.prefix) == (bucket, prefix)
    assert location.key("a/x.bin") == (f"{prefix}/a/x.bin" if prefix else "a/x.bin")
    assert location.uri("x") == f"s3://{bucket}/{location.key('x')}"


@pytest.mark.parametrize("uri", ["s3://", "s3:///prefix", "https://b/p", "b/p", "S3://b/p", ""])
def test_parse_s3_uri_refuses_what_is_not_one(uri):
    with pytest.raises(s3.S3Error, match=r"is not an s3://bucket/prefix URI$"):
        s3.parse_s3_uri(uri)


def test_check_bucket(s3_env):
    client = s3.client()
    s3.check_bucket(client, s3.S3Location(new_bucket(), "p"))  # exists: no error
    with pytest.raises(s3.S3Error) as err:
        s3.check_bucket(client, s3.parse_s3_uri("s3://missing-bucket-q/p"))
    assert str(err.value) == f"s3://missing-bucket-q: bucket does not exist at {s3_env}"
    assert not getattr(err.value, "retryable", False)


def test_refused_credentials_name_the_bucket_and_the_object(monkeypatch, tmp_path):
    from tests.conftest import moto_server

    (tmp_path / "f.bin").write_bytes(b"x")
    with moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as url:
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOTAKEY00000")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        client = s3.client()
        location = s3.parse_s3_uri("s3://locked/exports")
        with pytest.raises(s3.S3Error) as err:
            s3.check_bucket(client, location)
        message = str(err.value)
        assert message.startswith(f"s3://locked: credentials rejected at {url} (")
        assert "\n" not in message and "not-the-secret" not in message
        with pytest.raises(s3.S3Error, match=r"^s3://locked/exports/f.bin: credentials rejected"):
            s3.upload_directory(client, tmp_path, location, lineage={})


@pytest.fixture
def export_dir(tmp_path):
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "big.safetensors").write_bytes(bytes(range(256)) * (9 * MB // 256 + 1))  # > 8 MB
    (src / "config.json").write_text('{"a": 1}\n')
    (src / "sub" / "tok.json").write_text("{}\n")
    return src


def test_upload_directory_multipart_manifest_last_and_idempotent(s3_env, export_dir, tmp_path):
    bucket = new_bucket()
    location = s3.S3Location(bucket, "m/v1")
    client = s3.client()
    requests = Requests(client)
    lineage = {"version": "1", "data_md5": "d" * 32}

    manifest, sent = s3.upload_directory(
        client, export_dir, location, lineage=lineage, multipart_threshold_mb=1
    )
    assert sent == ["big.safetensors", "config.json", "sub/tok.json", "manifest.json"]
    expected_files = [
        {"key": f"m/v1/{name}", "size": (export_dir / name).stat().st_size,
         "sha256": sha((export_dir / name).read_bytes())}
        for name in ("big.safetensors", "config.json", "sub/tok.json")
    ]  # fmt: skip
    assert manifest == {"format": 1, "files": expected_files, "lineage": lineage}

    writes = requests.writes()
    big = [c[0] for c in writes if c[1] == "m/v1/big.safetensors"]
    # Above the threshold: one multipart upload of 8 MB parts (9 MB -> 2 parts).
    assert sorted(big) == sorted(["CreateMultipartUpload", "UploadPart", "UploadPart",
                                  "CompleteMultipartUpload"])  # fmt: skip
    assert ("PutObject", "m/v1/config.json") in writes
    assert writes[-1] == ("PutObject", "m/v1/manifest.json")  # last: a complete export
    assert sum(c[1] == "m/v1/manifest.json" for c in writes) == 1

    stored = json.loads(client.get_object(Bucket=bucket, Key="m/v1/manifest.json")["Body"].read())
    assert stored == manifest
    # Each object records the file's own sha256 (the multipart ETag/checksum is not one).
    for entry in expected_files:
        name = entry["key"].removeprefix("m/v1/")
        assert s3.remote_sha256(client, location, name) == entry["sha256"]
    assert s3.remote_sha256(client, location, "nothing-here") is None

    # The same directory again: only HEAD requests, nothing written.
    requests.calls.clear()
    again, sent = s3.upload_directory(
        client, export_dir, location, lineage=lineage, multipart_threshold_mb=1
    )
    assert sent == [] and requests.writes() == [] and again == manifest
    assert {c[0] for c in requests.calls} == {"HeadObject"}

    # One file changes: it and the manifest go again, nothing else.
    (export_dir / "config.json").write_text('{"a": 2}\n')
    requests.calls.clear()
    _, sent = s3.upload_directory(
        client, export_dir, location, lineage=lineage, multipart_threshold_mb=1
    )
    assert sent == ["config.json", "manifest.json"]
    assert [c[1] for c in requests.writes()] == ["m/v1/config.json", "m/v1/manifest.json"]


def test_server_side_encryption_is_requested(s3_env, tmp_path):
    (tmp_path / "a.txt").write_text("a")
    bucket = new_bucket()
    client = s3.client()
    s3.upload_directory(client, tmp_path, s3.S3Location(bucket, ""), lineage={}, sse="AES256")
    for key in ("a.txt", "manifest.json"):
        assert client.head_object(Bucket=bucket, Key=key)["ServerSideEncryption"] == "AES256"


def test_download_verified_round_trip_and_a_corrupted_object(s3_env, export_dir, tmp_path):
    bucket = new_bucket()
    client = s3.client()
    for prefix in ("", "team/exp/v3"):
        location = s3.S3Location(bucket, prefix)
        manifest, _ = s3.upload_directory(client, export_dir, location, lineage={"v": prefix})
        dest = tmp_path / f"dl-{prefix.replace('/', '-')}"
        assert s3.download_verified(client, location, dest) == manifest
        for name in ("big.safetensors", "config.json", "sub/tok.json"):
            assert (dest / name).read_bytes() == (export_dir / name).read_bytes()

    # Someone overwrites one object behind the export's back: the download says so.
    client.put_object(
        Bucket=bucket, Key="team/exp/v3/sub/tok.json", Body=b"{ }\n", Metadata={"sha256": "x"}
    )
    with pytest.raises(
        s3.S3Error, match=r"^s3://\S+/team/exp/v3/sub/tok.json: sha256 differs from manifest.json$"
    ):
        s3.download_verified(client, location, tmp_path / "corrupt")
    # An upload now notices the object differs and sends the file again, repairing the export.
    _, sent = s3.upload_directory(client, export_dir, location, lineage={"v": "team/exp/v3"})
    assert sent == ["sub/tok.json"]
    s3.download_verified(client, location, tmp_path / "repaired")


def test_a_prefix_without_manifest_is_an_incomplete_export(s3_env):
    bucket = new_bucket()
    client = s3.client()
    client.put_object(Bucket=bucket, Key="p/model.safetensors", Body=b"weights")
    with pytest.raises(
        s3.S3Error, match=rf"^s3://{bucket}/p: no manifest.json, the export is incomplete$"
    ):
        s3.download_verified(client, s3.S3Location(bucket, "p"), "unused")
