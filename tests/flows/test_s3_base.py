"""`base_model: s3://bucket/prefix/` through the whole flow, on moto's S3 server: trained from
its verified local copy, the URI and the weights' sha256 in the lineage, the champion evaluated
and exported from the same copy; a bad prefix stops the run before anything is trained."""

import json
import uuid
from pathlib import Path

import boto3
import mlflow
import pytest

from models.config.run import config_from_dict
from models.hashing import weights_sha256
from tasks.lib import s3
from tasks.tracking import client
from tests.flows.test_finetune import config


def upload_base(tiny_base, prefix="team/bases/tiny") -> str:
    bucket = f"bases-{uuid.uuid4().hex[:10]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    location = s3.parse_s3_uri(f"s3://{bucket}/{prefix}")
    for path in sorted(p for p in tiny_base.rglob("*") if p.is_file()):
        name = path.relative_to(tiny_base).as_posix()
        boto3.client("s3").upload_file(str(path), bucket, location.key(name))
    return f"s3://{bucket}/{prefix}/"


def test_an_s3_base_trains_with_exact_lineage_and_serves(
    project, tiny_base, prefect_harness, s3_env, tmp_path, monkeypatch
):
    from flows.finetune import finetune

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    uri = upload_base(tiny_base)
    raw = config(tiny_base, max_steps=4).model_dump(mode="json")
    first = finetune(config_from_dict({**raw, "base_model": uri}))
    assert first.promoted and first.version == "1"
    tags = client().get_model_version("flowtest", "1").tags
    assert tags["base_model"] == uri
    assert tags["base_model_sha256"] == weights_sha256(tiny_base)
    cached = list((tmp_path / "cache" / "loraflow" / "s3-bases").iterdir())
    assert len(cached) == 1

    # A second run reuses the copy (no second download) and evaluates the champion from it.
    second = finetune(
        config_from_dict({**raw, "base_model": uri, "adapter": {**raw["adapter"], "seed": 1}})
    )
    assert "champion" in second.report
    # The reviewer's side-by-side view has the champion's answers too.
    rows = json.loads(Path(second.adapter_dir, "eval_examples.json").read_text())
    assert len(rows) == 5
    assert all(list(r) == ["prompt", "expected", "base", "adapter", "champion"] for r in rows)
    assert list((tmp_path / "cache" / "loraflow" / "s3-bases").iterdir()) == cached

    # `loraflow reproduce` of an s3-based version: the same copy, the same adapter bytes.
    from flows.reproduce import reproduce

    again = reproduce("models:/flowtest/1")
    assert again.identical and again.differences == [], again.differences
    assert list((tmp_path / "cache" / "loraflow" / "s3-bases").iterdir()) == cached

    model = mlflow.pyfunc.load_model("models:/flowtest/1")
    assert isinstance(model.predict(["Reverse the words: a b c\nAnswer:"])[0], str)


def test_a_prefix_without_config_json_stops_before_training(
    project, tiny_base, prefect_harness, s3_env, tmp_path, monkeypatch
):
    from flows.finetune import finetune

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    uri = upload_base(tiny_base / "nothing-here")  # an empty prefix
    raw = config(tiny_base).model_dump(mode="json")
    with pytest.raises(s3.S3Error) as e:
        finetune(config_from_dict({**raw, "base_model": uri}))
    assert (
        str(e.value)
        == f"{uri.rstrip('/')}: no config.json under this prefix (not a model directory)"
    )
    assert not client().search_runs(
        [x.experiment_id for x in client().search_experiments()]
    )  # no MLflow run was opened: nothing was trained
