"""tasks.data_source against a real S3 API on loopback (moto's server mode) and real directories."""

from __future__ import annotations

import hashlib
import shutil
import uuid

import boto3
import pytest

from tasks.data_source import DataSourceError, SourceObject, SourceRead, fetch_data
from tests.conftest import free_port


@pytest.fixture
def bucket(s3_env):
    """A fresh bucket on the loopback S3 API: (client, name)."""
    s3 = boto3.client("s3")
    name = f"incoming-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    return s3, name


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_an_s3_prefix_becomes_an_exact_copy_with_each_etag_recorded(bucket, tmp_path):
    s3, name = bucket
    s3.put_object(Bucket=name, Key="demo/train.jsonl", Body=b'{"prompt": "a", "completion": "b"}\n')
    s3.put_object(Bucket=name, Key="demo/eval.jsonl", Body=b'{"prompt": "c", "completion": "d"}\n')
    s3.put_object(Bucket=name, Key="demo/more/extra.jsonl", Body=b"x\n")
    s3.put_object(Bucket=name, Key="demo/", Body=b"")  # a "folder" marker: no data
    s3.put_object(Bucket=name, Key="demo-other/train.jsonl", Body=b"not under the prefix\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "stale.jsonl").write_text("from an earlier run\n")

    read = fetch_data.fn(source=f"s3://{name}/demo", data_dir=str(data))

    files = sorted(p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file())
    assert files == ["eval.jsonl", "more/extra.jsonl", "train.jsonl"]
    assert (data / "more" / "extra.jsonl").read_bytes() == b"x\n"
    assert [(o.name, o.etag, o.version_id) for o in read.objects] == [
        ("eval.jsonl", md5(b'{"prompt": "c", "completion": "d"}\n'), ""),
        ("more/extra.jsonl", md5(b"x\n"), ""),
        ("train.jsonl", md5(b'{"prompt": "a", "completion": "b"}\n'), ""),
    ]
    tags = read.tags()
    assert tags["data_source"] == f"s3://{name}/demo" and tags["data_source.count"] == "3"
    extra = md5(b"x\n")
    assert tags["data_source.objects"].split("; ")[1] == f"more/extra.jsonl etag={extra}"
    assert not list(tmp_path.glob(".data.*"))  # no staging directory left behind


def test_a_versioned_bucket_records_the_version_read(bucket, tmp_path):
    s3, name = bucket
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket=name, Key="train.jsonl", Body=b"old\n")
    latest = s3.put_object(Bucket=name, Key="train.jsonl", Body=b"new\n")["VersionId"]

    read = fetch_data.fn(source=f"s3://{name}", data_dir=str(tmp_path / "data"))

    [obj] = read.objects
    assert (obj.name, obj.etag, obj.version_id) == ("train.jsonl", md5(b"new\n"), latest)
    assert (tmp_path / "data" / "train.jsonl").read_bytes() == b"new\n"
    assert f"version={latest}" in read.tags()["data_source.objects"]


def test_a_rewritten_object_changes_what_is_recorded(bucket, tmp_path):
    s3, name = bucket
    s3.put_object(Bucket=name, Key="p/train.jsonl", Body=b"one\n")
    first = fetch_data.fn(source=f"s3://{name}/p", data_dir=str(tmp_path / "data"))
    s3.put_object(Bucket=name, Key="p/train.jsonl", Body=b"two\n")
    second = fetch_data.fn(source=f"s3://{name}/p", data_dir=str(tmp_path / "data"))
    assert first.objects[0].etag != second.objects[0].etag
    assert first.tags()["data_source.sha256"] != second.tags()["data_source.sha256"]
    assert (tmp_path / "data" / "train.jsonl").read_bytes() == b"two\n"


def test_an_empty_prefix_fails_in_one_line_and_keeps_the_data(bucket, tmp_path):
    s3, name = bucket
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("kept\n")
    with pytest.raises(DataSourceError) as error:
        fetch_data.fn(source=f"s3://{name}/nothing-here", data_dir=str(data))
    assert str(error.value) == (
        f"data.source s3://{name}/nothing-here: empty (no objects under the prefix)"
    )
    assert not error.value.retryable
    assert (data / "train.jsonl").read_text() == "kept\n"


def test_a_missing_bucket_and_an_unreachable_endpoint_fail_in_one_line(
    s3_env, tmp_path, monkeypatch
):
    with pytest.raises(DataSourceError) as error:
        fetch_data.fn(source="s3://no-such-bucket-here/p", data_dir=str(tmp_path / "d"))
    assert str(error.value) == (
        f"data.source s3://no-such-bucket-here/p: bucket does not exist at {s3_env}"
    )
    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(DataSourceError) as error:
        fetch_data.fn(source="s3://b/p", data_dir=str(tmp_path / "d"))
    assert str(error.value) == f"data.source s3://b/p: cannot reach the S3 endpoint at {closed}"
    assert "\n" not in str(error.value) and not error.value.retryable


def test_a_directory_source_is_copied_with_each_files_md5(tmp_path):
    source = tmp_path / "shared" / "incoming"
    (source / "sub").mkdir(parents=True)
    (source / "train.jsonl").write_bytes(b"t\n")
    (source / "sub" / "eval.jsonl").write_bytes(b"e\n")
    data = tmp_path / "project" / "data"

    read = fetch_data.fn(source=source.as_uri(), data_dir=str(data))

    assert (data / "sub" / "eval.jsonl").read_bytes() == b"e\n"
    assert [(o.name, o.etag, o.size) for o in read.objects] == [
        ("sub/eval.jsonl", md5(b"e\n"), 2),
        ("train.jsonl", md5(b"t\n"), 2),
    ]
    with pytest.raises(DataSourceError, match=r"^data.source .*/nowhere: no such directory$"):
        fetch_data.fn(source=str(tmp_path / "nowhere"), data_dir=str(data))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceError, match=r"^data.source .*/empty: empty \(no files"):
        fetch_data.fn(source=str(tmp_path / "empty"), data_dir=str(data))
    assert (data / "train.jsonl").is_file()  # a failed read leaves the last copy in place
    for inside in (tmp_path / "project", data / "sub"):
        with pytest.raises(DataSourceError, match=r"must not contain, or lie inside, data.path"):
            fetch_data.fn(source=str(inside), data_dir=str(data))


def test_a_long_listing_is_cut_in_the_tag_and_counted():
    objects = tuple(SourceObject(f"part-{i:05d}.jsonl", 10, "0" * 32) for i in range(500))
    tags = SourceRead("s3://b/p", objects).tags()
    assert len(tags["data_source.objects"]) < 4100
    assert tags["data_source.objects"].endswith("(500 objects in all, see data_source.sha256)")
    assert tags["data_source.count"] == "500" and len(tags["data_source.sha256"]) == 64


def test_without_a_source_a_missing_data_dir_is_pulled_at_its_recorded_version(project):
    """A run in a fresh clone (data.dvc committed, data/ not): the data comes from the DVC
    remote at the md5 data.dvc records; an existing data/ is left as it is."""
    from tasks.data import push_data, version_data

    dataset = version_data.fn(data_dir="data")
    push_data.fn(dataset=dataset)
    train = (project / "data" / "train.jsonl").read_bytes()
    shutil.rmtree(project / "data")
    shutil.rmtree(project / ".dvc" / "cache")  # a clone has no cache either

    assert fetch_data.fn(source=None, data_dir="data") is None
    assert (project / "data" / "train.jsonl").read_bytes() == train
    assert version_data.fn(data_dir="data").md5 == dataset.md5

    (project / "data" / "train.jsonl").write_text("edited here\n")
    fetch_data.fn(source=None, data_dir="data")
    assert (project / "data" / "train.jsonl").read_text() == "edited here\n"
