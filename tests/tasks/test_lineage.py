"""Lineage tags: the code version (and whether it had local changes), base weights, packages."""

import hashlib
import os
import subprocess
from importlib import metadata

import pytest

from tasks import lineage
from tasks.lineage import collect_lineage, git_commit, package_versions


def git(repo, *args) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    git(root, "config", "user.email", "ci@example.com")
    git(root, "config", "user.name", "ci")
    (root / "code.py").write_text("x = 1\n")
    git(root, "add", "code.py")
    git(root, "commit", "-q", "-m", "one")
    return root


def test_git_commit_and_the_dirty_flag(repo, tmp_path):
    head = git(repo, "rev-parse", "HEAD")
    assert len(head) == 40
    assert git_commit(str(repo)) == (head, False)
    (repo / "notes.txt").write_text("untracked files are not code changes\n")
    assert git_commit(str(repo)) == (head, False)
    (repo / "code.py").write_text("x = 2\n")
    assert git_commit(str(repo)) == (head, True)
    git(repo, "commit", "-qam", "two")
    second = git(repo, "rev-parse", "HEAD")
    assert second != head and git_commit(str(repo)) == (second, False)
    # In a subdirectory it is the same checkout.
    (repo / "sub").mkdir()
    assert git_commit(str(repo / "sub")) == (second, False)


def test_outside_a_checkout_the_commit_is_unknown(tmp_path):
    outside = tmp_path / "plain"
    outside.mkdir()
    assert git_commit(str(outside)) == ("unknown", False)
    assert git_commit(str(tmp_path / "missing")) == ("unknown", False)


def test_package_versions(monkeypatch):
    versions = package_versions()
    assert set(versions) == set(lineage.PACKAGES)
    assert versions["torch"] == metadata.version("torch")
    assert versions["peft"] == metadata.version("peft")
    monkeypatch.setattr(lineage, "PACKAGES", ("torch", "no-such-package-loraflow"))
    assert package_versions() == {
        "torch": metadata.version("torch"),
        "no-such-package-loraflow": "not installed",
    }


def test_collect_lineage_records_the_base_weights_hash(repo, tiny_base, monkeypatch):
    monkeypatch.chdir(repo)
    tags = collect_lineage.fn(base_model=str(tiny_base))
    # By hand: each weight file's relative path, NUL, its sha256 hex and a newline, hashed.
    h = hashlib.sha256()
    for weights in sorted(tiny_base.glob("*.safetensors")):
        h.update(f"{weights.name}\0{hashlib.sha256(weights.read_bytes()).hexdigest()}\n".encode())
    assert tags["base_model_sha256"] == h.hexdigest()
    assert tags["base_model"] == str(tiny_base)
    assert tags["git_commit"] == git(repo, "rev-parse", "HEAD") and tags["git_dirty"] == "false"
    assert tags["version.transformers"] == metadata.version("transformers")
    assert all(isinstance(v, str) for v in tags.values())  # MLflow tags are strings

    (repo / "code.py").write_text("changed\n")
    assert collect_lineage.fn(base_model=str(tiny_base))["git_dirty"] == "true"
    # A hub id is named, not hashed (nothing is downloaded).
    assert collect_lineage.fn(base_model="org/some-model")["base_model_sha256"] == "hub"


def test_file_hashes_are_remembered_by_size_and_mtime(tmp_path):
    from models.hashing import FileHashes, file_sha256

    data = tmp_path / "weights.bin"
    data.write_bytes(b"a" * 1000)
    table = tmp_path / "hashes.json"
    hashes = FileHashes(table)
    first = hashes.digest(data)
    hashes.save()
    assert first == file_sha256(data)
    stamp = data.stat()
    # Same size and mtime: the remembered digest is trusted (as DVC trusts its state), across
    # processes (a new instance reads the table)...
    with data.open("r+b") as f:
        f.write(b"b")
    os.utime(data, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert FileHashes(table).digest(data) == first
    # ...and any other mtime (or size) reads the file again.
    os.utime(data, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1))
    assert FileHashes(table).digest(data) == file_sha256(data) != first
    table.write_text("{not json")  # a damaged table only costs a re-read
    assert FileHashes(table).digest(data) == file_sha256(data)


def test_hashed_inputs_are_what_a_run_records(project, tiny_base):
    """Data md5 as `dvc add` records it (the real dvc CLI), config and base hashes as the flow's
    lineage has them; None while the data is not versioned as it stands."""
    from models.config.run import config_from_dict
    from tasks.data import version_data
    from tasks.lineage import hash_inputs, run_tags

    cfg = config_from_dict({"base_model": str(tiny_base), "data": {"path": "data"}})
    assert hash_inputs.fn(cfg) is None  # no data.dvc yet
    dataset = version_data.fn(data_dir="data")
    tags = run_tags(cfg, collect_lineage.fn(base_model=str(tiny_base)), dataset.md5)
    inputs = hash_inputs.fn(cfg)
    assert inputs == {k: tags[k] for k in ("data_md5", "config_sha256", "base_model_sha256")}

    # A file in a subdirectory, then a changed file: each equal to DVC's md5 once added.
    (project / "data" / "extra").mkdir()
    (project / "data" / "extra" / "notes.txt").write_text("more\n")
    assert hash_inputs.fn(cfg) is None
    assert version_data.fn(data_dir="data").md5 == hash_inputs.fn(cfg)["data_md5"]
    with (project / "data" / "train.jsonl").open("a") as f:
        f.write('{"prompt": "p", "completion": " c"}\n')
    assert hash_inputs.fn(cfg) is None
    md5 = version_data.fn(data_dir="data").md5
    assert md5 != dataset.md5 and hash_inputs.fn(cfg)["data_md5"] == md5

    # Inputs that are elsewhere until the run fetches them are not known as they stand: the flow
    # decides after fetching (a stale local copy, or the URI in place of the weights, must not).
    version_data.fn(data_dir="data")
    assert hash_inputs.fn(cfg) is not None
    elsewhere = {"data": {"path": "data", "source": str(project / "incoming")}}
    assert hash_inputs.fn(config_from_dict({"base_model": str(tiny_base), **elsewhere})) is None
    s3_base = config_from_dict({"base_model": "s3://bases/tiny", "data": {"path": "data"}})
    assert hash_inputs.fn(s3_base) is None
