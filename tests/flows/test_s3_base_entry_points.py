"""`base_model: s3://bucket/prefix/` in every entry point besides `loraflow run` (tested in
test_s3_base.py with reproduce and the champion's export): `loraflow check` and `loraflow plan`,
the compare flow and the dispatched training flow, on moto's S3 server. The same cache;
one-line errors before anything is trained."""

import json

import pytest

from models.config.run import config_from_dict
from models.hashing import weights_sha256
from tasks.tracking import client
from tests.flows.test_s3_base import upload_base
from tests.test_cli import write_config


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "loraflow" / "s3-bases"


def test_check_and_plan_read_an_s3_base_through_the_cache(
    project, tiny_base, s3_env, cache, capsys
):
    from flows.cli import main

    uri = upload_base(tiny_base)
    local = write_config(project, tiny_base)
    assert main(["plan", str(local), "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)

    # plan: the config only (no weights downloaded), the same figures as from the directory,
    # but for the export peak, which without the weights' files counts the base's parameters
    # as one file (models.training.plan.largest_base_file).
    cfg = write_config(project, tiny_base, base_model=uri)
    assert main(["plan", str(cfg), "--json"]) == 0
    from_config = json.loads(capsys.readouterr().out)
    assert from_config.pop("est_export_peak_bytes") > 0
    assert from_config == {k: v for k, v in expected.items() if k != "est_export_peak_bytes"}
    (config_only,) = cache.iterdir()
    assert config_only.name.endswith("-config")
    assert sorted(p.name for p in config_only.iterdir()) == ["config.json"]

    # check: the whole copy, verified, checked as a local base; plan then reads that copy.
    assert main(["check", str(cfg)]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.endswith("ok\n")
    whole = cache / config_only.name.removesuffix("-config")
    assert sorted(cache.iterdir()) == sorted([config_only, whole])
    assert weights_sha256(whole) == weights_sha256(tiny_base)
    assert main(["plan", str(cfg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == expected
    assert sorted(cache.iterdir()) == sorted([config_only, whole])


def test_check_and_plan_refuse_a_bad_s3_base_in_one_line(
    project, tiny_base, s3_env, cache, capsys, monkeypatch
):
    from flows.cli import main

    empty = upload_base(tiny_base / "nothing-here")
    cfg = write_config(project, tiny_base, base_model=empty)
    for command in ("check", "plan"):
        assert main([command, str(cfg)]) == 2
        assert capsys.readouterr().err == (
            f"loraflow: error: {empty.rstrip('/')}: no config.json under this prefix "
            "(not a model directory)\n"
        )

    uri = upload_base(tiny_base)
    cfg = write_config(project, tiny_base, base_model=uri)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(project / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(project / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for command in ("check", "plan"):
        assert main([command, str(cfg)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no AWS credentials found" in err
    assert not cache.exists() or not list(cache.iterdir())


def test_compare_trains_from_an_s3_base_with_exact_lineage(
    project, tiny_base, prefect_harness, s3_env, cache
):
    from flows.compare import compare
    from tests.flows.test_compare import config

    uri = upload_base(tiny_base)
    raw = config(tiny_base).model_dump(mode="json")
    raw["training"]["max_steps"] = 2
    (row,) = compare(config_from_dict({**raw, "base_model": uri}), ["lora"])
    tags = client().get_model_version("cmp", row["version"]).tags
    assert tags["base_model"] == uri
    assert tags["base_model_sha256"] == weights_sha256(tiny_base)
    assert len(list(cache.iterdir())) == 1


def test_the_dispatched_training_reads_an_s3_base_through_its_cache(
    project, tiny_base, prefect_harness, s3_env, cache, tmp_path
):
    from flows.train import train_remote
    from tests.flows.test_train import new_run, pushed_version, tiny_config

    dataset = pushed_version(project, tmp_path / "data")
    raw = tiny_config(tiny_base, max_steps=2).model_dump(mode="json")
    config = config_from_dict({**raw, "base_model": upload_base(tiny_base)})
    sha = train_remote(config, run_id=new_run(), data_md5=dataset.md5, with_evaluation=True)
    assert len(sha) == 64

    (copy,) = cache.iterdir()  # the worker trained from the verified copy of the base
    assert weights_sha256(copy) == weights_sha256(tiny_base)
