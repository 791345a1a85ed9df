"""Where workers take the flow code from (loraflow_deploy): decided at deploy time, one line each
way it cannot work; a clone is at the deployed commit whatever was pushed after."""

import subprocess

import pytest

import loraflow_deploy
from loraflow_deploy import DeployError, code_source, fetch_code


def git(cwd, *args) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def commit_all(repo, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "-c", "user.email=ci@example.com", "-c", "user.name=ci", "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A loraflow-shaped git checkout (cwd) with one commit, pushed to a bare repository."""
    repo = tmp_path / "checkout"
    (repo / "flows").mkdir(parents=True)
    (repo / "flows" / "finetune.py").write_text("VERSION = 'deployed'\n")
    git(repo, "init", "-q")
    first = commit_all(repo, "deployed")
    bare = tmp_path / "loraflow.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    git(repo, "push", "-q", str(bare), "HEAD:refs/heads/main")
    git(bare, "symbolic-ref", "HEAD", "refs/heads/main")
    monkeypatch.chdir(repo)
    monkeypatch.delenv(loraflow_deploy.HOME, raising=False)
    monkeypatch.delenv(loraflow_deploy.REPOSITORY, raising=False)
    monkeypatch.setattr(loraflow_deploy, "_SAID", set())
    return repo, bare, first


def test_without_loraflow_home_the_deploying_checkout_is_used_and_said_once(checkout, capsys):
    repo, _, _ = checkout
    assert code_source() == {"directory": str(repo), "repository": "", "commit": ""}
    code_source()  # `prefect deploy --all` runs the build step once per deployment
    said = capsys.readouterr().out.strip().splitlines()
    assert said == [
        f"LORAFLOW_HOME is not set: deployments run from this checkout, {repo}, on every worker "
        "(same path there); set LORAFLOW_HOME to the checkout's path on the workers, or "
        "LORAFLOW_REPOSITORY to a git URL for every run to clone this commit"
    ]


def test_a_worker_without_the_checkout_refuses_in_one_line(checkout, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "elsewhere"
    with pytest.raises(DeployError) as error:
        fetch_code(directory=str(missing))
    assert str(error.value) == (
        f"no loraflow checkout at {missing} on this worker (flows/finetune.py missing): deploy "
        "with LORAFLOW_HOME set to the checkout's path on the workers, or LORAFLOW_REPOSITORY "
        "to a git URL"
    )


def test_a_repository_outside_a_git_checkout_is_refused_at_deploy_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(loraflow_deploy.REPOSITORY, "file:///nowhere.git")
    with pytest.raises(DeployError, match=f"^LORAFLOW_REPOSITORY is set but {tmp_path} is not a"):
        code_source()


def test_a_run_clones_the_deployed_commit_not_what_was_pushed_after(
    checkout, tmp_path, monkeypatch, capsys
):
    repo, bare, first = checkout
    monkeypatch.setenv(loraflow_deploy.REPOSITORY, bare.as_uri())
    monkeypatch.setenv(loraflow_deploy.HOME, "/srv/loraflow")
    source = code_source()
    assert source == {"directory": "/srv/loraflow", "repository": bare.as_uri(), "commit": first}
    assert f"clone {bare.as_uri()} at {first[:12]}" in capsys.readouterr().out

    (repo / "flows" / "finetune.py").write_text("VERSION = 'pushed later'\n")
    later = commit_all(repo, "later")
    git(repo, "push", "-q", str(bare), "HEAD:refs/heads/main")
    assert later != first

    work = tmp_path / "worker-run"  # a process worker runs each flow run in a scratch directory
    work.mkdir()
    monkeypatch.chdir(work)
    pulled = fetch_code(**source)
    assert pulled["directory"].startswith(str(work))
    assert git(pulled["directory"], "rev-parse", "HEAD") == first
    assert (work / pulled["directory"] / "flows" / "finetune.py").read_text() == (
        "VERSION = 'deployed'\n"
    )
