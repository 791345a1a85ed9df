"""After `loraflow demo-assets` on a fresh clone, `dvc status` reports nothing: both demos' data
(the chat demo's too, which `make run` never versions) are in the DVC cache at the committed md5."""

import shutil
import sys

import yaml

from flows.cli import main
from tests.conftest import REPO, run


def test_demo_assets_leave_dvc_status_clean_on_a_fresh_clone(tmp_path, monkeypatch, capsys):
    clone = tmp_path / "clone"
    clone.mkdir()
    run(["git", "init", "-q"], clone)
    run([sys.executable, "-m", "dvc", "init", "-q"], clone)
    for dvc_file in ("data.dvc", "data-chat.dvc"):
        shutil.copy(REPO / dvc_file, clone / dvc_file)
    monkeypatch.chdir(clone)
    before = yaml.safe_load(run([sys.executable, "-m", "dvc", "status", "--json"], clone))
    assert set(before) == {"data.dvc", "data-chat.dvc"}  # what a fresh clone reported

    assert main(["demo-assets"]) == 0

    status = run([sys.executable, "-m", "dvc", "status", "--json"], clone)
    assert yaml.safe_load(status) == {}, status
    for dvc_file in ("data.dvc", "data-chat.dvc"):  # the committed versions, untouched
        assert (clone / dvc_file).read_text() == (REPO / dvc_file).read_text()
