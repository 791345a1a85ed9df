"""Pulling a data version by md5 from the DVC remote, without touching the working tree."""

import hashlib
import subprocess
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
