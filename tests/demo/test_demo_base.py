"""The demo base model is shipped in git (demo/base): the same bytes on every machine.

It is not rebuilt on a user's machine because its pretraining's float results, and so its bytes,
depend on the CPU (docs/reproducibility.md); the sha256 of every shipped file is pinned here.
"""

import hashlib
import subprocess

from bench.assets import DEMO_BASE
from flows.cli import main
from models.config.file import load_config
from models.hashing import weights_sha256
from tests.conftest import REPO

SHIPPED = REPO / "demo" / "base"
PINNED = {
    "config.json": "078e288c84ca5c43eedd3fe2b98cb7975d563f0eb6b7c86f127552285b96a4af",
    "generation_config.json": "07a76a546f0bd65953003a73502f49c545eda98f25ae63829f7f8f1d23c69241",
    "model.safetensors": "ec7bdd2d32eb437d910dabce63cff3a33eafde515d1e442e103b9da642e39e07",
    "tokenizer.json": "1f14fbe1bc0e1a24bb17e3e7f606ca0e8eabdf1401ba184c8d5c6bfb6770905f",
    "tokenizer_config.json": "eb290a612ad118c5319600e933ef8d4a77f9fad06795f96cb2238ac9aeb9cc3b",
}
# The lineage tag `base_model_sha256` of every demo run (models.hashing.weights_sha256).
PINNED_WEIGHTS = "a97f223c98fd3ee791a59fb7dc5fc523498a8a10bfe16a923f29ef3eb944b917"


def test_every_shipped_file_has_its_pinned_sha256():
    got = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(SHIPPED.iterdir())
        if p.is_file()
    }
    assert got == PINNED
    assert weights_sha256(SHIPPED) == PINNED_WEIGHTS


def test_shipped_files_are_tracked_by_git_and_not_ignored():
    tracked = subprocess.run(
        ["git", "ls-files", "demo/base"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert sorted(tracked) == sorted(f"demo/base/{name}" for name in PINNED)
    ignored = subprocess.run(
        ["git", "check-ignore", *tracked], cwd=REPO, capture_output=True, text=True
    )
    assert ignored.returncode == 1 and ignored.stdout == ""  # 1: none of them is ignored


def test_demo_config_and_benchmarks_use_the_shipped_base(monkeypatch):
    monkeypatch.chdir(REPO)
    config = load_config(REPO / "configs" / "demo.yaml", [])
    assert (REPO / config.base_model).resolve() == SHIPPED
    assert DEMO_BASE.resolve() == SHIPPED


def test_demo_assets_builds_the_data_only(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["demo-assets", "--data-dir", "data"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "data-chat", "data-smollm2"]
    for data in ("data", "data-chat", "data-smollm2"):  # one directory, one DVC version each
        assert sorted(p.name for p in (tmp_path / data).iterdir()) == ["eval.jsonl", "train.jsonl"]
    out = capsys.readouterr().out
    assert "demo data: {'train': 20000, 'eval': 200} examples in data\n" in out
    assert "demo chat data: {'train': 2000, 'eval': 200} examples in data-chat\n" in out
    assert "SmolLM2 example data: {'train': 1000, 'eval': 100} examples in data-smollm2\n" in out
    assert "demo base model: demo/base (shipped in git" in out
