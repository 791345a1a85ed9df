"""`base_model: s3://bucket/prefix/` through the whole flow, on moto's S3 server: trained from
its verified local copy, the URI and the weights' sha256 in the lineage, the champion evaluated,
reproduced and exported (to another bucket) from the same copy, each of the base's objects
fetched once (moto's request recorder counts the GetObject calls of every process); a bad prefix
stops the run before anything is trained."""

import json
import uuid
from pathlib import Path

import boto3
import mlflow
import pytest
import torch

from models.config.run import config_from_dict
from models.hashing import weights_sha256
from tasks.lib import s3
from tasks.tracking import client
from tests.conftest import S3Requests
from tests.flows.test_finetune import config

PROMPT = "Reverse the words: a b c\nAnswer:"


def upload_base(tiny_base, prefix="team/bases/tiny") -> str:
    bucket = f"bases-{uuid.uuid4().hex[:10]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    location = s3.parse_s3_uri(f"s3://{bucket}/{prefix}")
    for path in sorted(p for p in tiny_base.rglob("*") if p.is_file()):
        name = path.relative_to(tiny_base).as_posix()
        boto3.client("s3").upload_file(str(path), bucket, location.key(name))
    return f"s3://{bucket}/{prefix}/"


@pytest.fixture
def s3_requests(s3_env):
    """What the S3 server receives during the test, from any process."""
    recorder = S3Requests(s3_env)
    yield recorder
    recorder.stop()


def base_downloads(s3_requests, base: s3.S3Location) -> dict[str, int]:
    """GetObject calls per object of the base. Each listing also asks for the manifest.json an
    export would have left there (absent, so no object of this base)."""
    gets = s3_requests.object_gets(base.bucket)
    gets.pop(base.key(s3.MANIFEST), None)
    return gets


def logits_and_answer(model, tokenizer) -> tuple[torch.Tensor, list[int]]:
    ids = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    return logits, out[0, ids["input_ids"].shape[1] :].tolist()


def test_an_s3_base_trains_exports_and_serves_from_one_download(
    project, tiny_base, prefect_harness, s3_env, s3_requests, tmp_path, monkeypatch
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flows.finetune import finetune
    from tasks.registry import resolve_version

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    uri = upload_base(tiny_base)
    base = s3.parse_s3_uri(uri)
    files = [p.relative_to(tiny_base).as_posix() for p in tiny_base.rglob("*") if p.is_file()]
    once = {base.key(name): 1 for name in files}
    destination = f"exports-{uuid.uuid4().hex[:10]}"
    boto3.client("s3").create_bucket(Bucket=destination)
    export = {"enabled": True, "to": f"s3://{destination}/team", "dtype": "float32"}

    raw = config(tiny_base, max_steps=4).model_dump(mode="json")
    first = finetune(config_from_dict({**raw, "base_model": uri, "export": export}))
    assert first.promoted and first.version == "1"
    tags = client().get_model_version("flowtest", "1").tags
    assert tags["base_model"] == uri
    assert tags["base_model_sha256"] == weights_sha256(tiny_base)
    assert base_downloads(s3_requests, base) == once  # downloaded, each object once

    # The new champion was exported, merged into the base's local copy: the manifest is there
    # with the lineage, and the merged model answers as the champion (adapter on the base).
    exported = s3.parse_s3_uri(f"s3://{destination}/team/flowtest/v1")
    assert tags["export.uri"] == exported.uri()
    manifest = s3.download_verified(boto3.client("s3"), exported, tmp_path / "export")
    assert manifest["lineage"]["base_model"] == uri
    assert manifest["lineage"]["base_model_sha256"] == weights_sha256(tiny_base)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "export")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    plain = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    base_logits, _ = logits_and_answer(plain, tokenizer)
    champion = PeftModel.from_pretrained(
        plain, resolve_version("models:/flowtest@champion").adapter_dir
    ).eval()
    champion_logits, champion_answer = logits_and_answer(champion, tokenizer)
    merged_logits, merged_answer = logits_and_answer(merged, tokenizer)
    assert (merged_logits - champion_logits).abs().max().item() < 1e-4
    assert merged_answer == champion_answer
    assert (base_logits - champion_logits).abs().max().item() > 1e-3  # the adapter is in it

    # A second run reuses the copy and evaluates the champion from it.
    second = finetune(
        config_from_dict({**raw, "base_model": uri, "adapter": {**raw["adapter"], "seed": 1}})
    )
    assert "champion" in second.report
    # The reviewer's side-by-side view has the champion's answers too.
    rows = json.loads(Path(second.adapter_dir, "eval_examples.json").read_text())
    assert len(rows) == 5
    assert all(list(r) == ["prompt", "expected", "base", "adapter", "champion"] for r in rows)

    # `loraflow reproduce` of an s3-based version: the same copy, the same adapter bytes.
    from flows.reproduce import reproduce

    again = reproduce("models:/flowtest/1")
    assert again.identical and again.differences == [], again.differences

    model = mlflow.pyfunc.load_model("models:/flowtest/1")
    assert isinstance(model.predict([PROMPT])[0], str)

    # Two trainings, an evaluation of the champion, a reproduction, an export and a served
    # model later, each of the base's objects has still been fetched once: one local copy.
    assert base_downloads(s3_requests, base) == once
    assert len(list((tmp_path / "cache" / "loraflow" / "s3-bases").iterdir())) == 1


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
