"""Pulling a data version by md5 from the DVC remote, without touching the working tree."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.data import DvcError, fetch_data_version, push_data, version_data


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_pushed_version_comes_back_by_md5_after_the_data_changed(project):
    old = version_data.fn(data_dir="data")
    push_data.fn(dataset=old)
    expected = {p.name: digest(p) for p in (project / "data").iterdir()}
    # The working tree moves on to new data (a newer version, not pushed).
    (project / "data" / "train.jsonl").write_text('{"prompt": "p", "completion": " c"}\n')
    new = version_data.fn(data_dir="data")
    assert new.md5 != old.md5
    dvc_file = (project / "data.dvc").read_text()

    pulled = fetch_data_version.fn(md5=old.md5, repo=str(project))
    assert {p.name: digest(p) for p in sorted(Path(pulled).iterdir())} == (expected)
    # Working tree and data.dvc untouched; git sees nothing new (the pull lives in .loraflow/).
    assert (project / "data.dvc").read_text() == dvc_file
    assert (project / "data" / "train.jsonl").read_text().startswith('{"prompt": "p"')
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all", ".loraflow"],
        cwd=project,
        capture_output=True,
        text=True,
    ).stdout
    assert status == ""
    # A second fetch reuses the completed pull.
    assert fetch_data_version.fn(md5=old.md5, repo=str(project)) == pulled


def test_an_unknown_version_is_a_one_line_error(project):
    with pytest.raises(DvcError, match="dvc pull data.dvc"):
        fetch_data_version.fn(md5="0" * 32 + ".dir", repo=str(project))


def test_an_s3_remote_gets_the_push_and_serves_the_pull_in_a_fresh_clone(project, s3_env, tmp_path):
    """DVC's S3 remote (dvc-s3) against an S3 API server on loopback; endpoint in the repo
    config, credentials from the standard AWS variables."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_env)
    s3.create_bucket(Bucket="dvc-store")
    dvc = [sys.executable, "-m", "dvc"]
    for args in (
        ["remote", "add", "-d", "shared", "s3://dvc-store/loraflow"],
        ["remote", "modify", "shared", "endpointurl", s3_env],
    ):
        subprocess.run([*dvc, *args], cwd=project, check=True, capture_output=True)
    subprocess.run(["git", "commit", "-qam", "s3 remote"], cwd=project, check=True)

    dataset = version_data.fn(data_dir="data")
    push_data.fn(dataset=dataset)
    stored = s3.list_objects_v2(Bucket="dvc-store", Prefix="loraflow/")
    assert stored["KeyCount"] >= 3  # the directory listing and its two files, content-addressed

    # A fresh clone of the repository (no data/, no DVC cache) pulls that version from S3.
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    pulled = fetch_data_version.fn(md5=dataset.md5, repo=str(clone))
    assert {p.name: digest(p) for p in Path(pulled).iterdir()} == {
        p.name: digest(p) for p in (project / "data").iterdir()
    }


@pytest.mark.parametrize("md5", ["../../../victim", "/tmp/victim", "0" * 31 + "/", ""])
def test_a_recorded_md5_cannot_point_outside_the_data_versions(project, md5):
    """data_md5 comes from a registry tag and names a directory that is replaced on a pull."""
    victim = project.parent / "victim"
    victim.mkdir()
    (victim / "keep").write_text("mine")
    with pytest.raises(DvcError, match=r"^data md5 .* is not an md5 \(32 hex digits") as err:
        fetch_data_version.fn(md5=md5, repo=str(project))
    assert not err.value.retryable
    assert (victim / "keep").read_text() == "mine"
    assert not (project / ".loraflow" / "data-versions").exists()
