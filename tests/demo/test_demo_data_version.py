"""A fresh clone gets the demo data back bit-identically: regenerating each demo's data gives the
md5 its committed .dvc file pins (data.dvc for `make run`, data-chat.dvc for the chat demo,
data-smollm2.dvc for the real-model example)."""

import shutil
import sys

import pytest
import yaml

from demo import build_demo_data
from demo.chat import build_demo_chat_data
from demo.smollm2_task import build_smollm2_task_data
from tests.conftest import REPO, run

BUILDERS = {
    "data": build_demo_data,
    "data-chat": build_demo_chat_data,
    "data-smollm2": build_smollm2_task_data,
}


@pytest.mark.parametrize("data_dir", sorted(BUILDERS))
def test_regenerated_demo_data_matches_its_committed_dvc_file(tmp_path, data_dir):
    dvc_file = f"{data_dir}.dvc"
    committed = yaml.safe_load((REPO / dvc_file).read_text())["outs"][0]
    assert committed["path"] == data_dir
    repo = tmp_path / "clone"
    repo.mkdir()
    run(["git", "init", "-q"], repo)
    run([sys.executable, "-m", "dvc", "init", "-q"], repo)
    BUILDERS[data_dir](repo / data_dir)  # what `make demo-assets` does on a fresh clone
    # What the pipeline's version stage does: `dvc add` caches the data and rewrites the .dvc file.
    run([sys.executable, "-m", "dvc", "add", "-q", data_dir], repo)
    regenerated = yaml.safe_load((repo / dvc_file).read_text())["outs"][0]
    assert (regenerated["md5"], regenerated["size"], regenerated["nfiles"]) == (
        committed["md5"],
        committed["size"],
        committed["nfiles"],
    )
    # The committed .dvc file now describes the workspace exactly: `dvc status` is clean.
    shutil.copy(REPO / dvc_file, repo / dvc_file)
    status = run([sys.executable, "-m", "dvc", "status", "--json", dvc_file], repo)
    assert yaml.safe_load(status) == {}, status
