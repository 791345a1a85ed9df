"""A fresh clone gets the demo data back bit-identically: regenerating it gives data.dvc's md5."""

import shutil
import sys

import yaml

from tests.conftest import REPO, run


def test_regenerated_demo_data_matches_committed_data_dvc(tmp_path):
    from demo import build_demo_data

    committed = yaml.safe_load((REPO / "data.dvc").read_text())["outs"][0]
    repo = tmp_path / "clone"
    repo.mkdir()
    run(["git", "init", "-q"], repo)
    run([sys.executable, "-m", "dvc", "init", "-q"], repo)
    build_demo_data(repo / "data")  # what `make run` does on a fresh clone
    # What the pipeline's version stage does: `dvc add` caches the data and rewrites data.dvc.
    run([sys.executable, "-m", "dvc", "add", "-q", "data"], repo)
    regenerated = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]
    assert (regenerated["md5"], regenerated["size"], regenerated["nfiles"]) == (
        committed["md5"],
        committed["size"],
        committed["nfiles"],
    )
    # The committed data.dvc now describes the workspace exactly: `dvc status` is clean.
    shutil.copy(REPO / "data.dvc", repo / "data.dvc")
    status = run([sys.executable, "-m", "dvc", "status", "--json", "data.dvc"], repo)
    assert yaml.safe_load(status) == {}, status
