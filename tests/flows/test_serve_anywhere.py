"""A version registered from an s3:// base serves on a machine that has only the registry and S3
credentials (moto's S3 server): a fresh process with its own HOME and working directory, the
training machine's copy of the base gone, loads it and answers exactly as at training, and so
does `mlflow models serve`; against changed weights under the same prefix the load is refused."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import mlflow
import pytest
import torch
from safetensors.torch import load_file, save_file

from models.base_model.identity import OtherBaseError
from models.evaluation.serving import generate, load_adapted
from models.hashing import weights_sha256
from tasks.base_model import fetch_base_model
from tasks.lib.s3 import parse_s3_uri
from tasks.lineage import collect_lineage
from tasks.registry import register_adapter
from tasks.tracking import open_run
from tests.conftest import REPO, served_model
from tests.flows.test_s3_base import upload_base
from tests.tasks.test_pyfunc_schema import post
from tests.tasks.test_registry import trained_adapter

PROMPTS = ["Repeat the words: red cat\nAnswer:", "Reverse the words: a b c\nAnswer:"]
TOKENS = 8

# The serving machine: MLflow's public loader in a fresh interpreter. It prints the answers, the
# base it loaded and where its loraflow code came from, and saves the logits on `ids`.
LOAD = """
import json, sys
import mlflow, torch
model = mlflow.pyfunc.load_model(sys.argv[1])
answers = model.predict(json.loads(sys.argv[2]), params={"max_new_tokens": int(sys.argv[3])})
inner = model.unwrap_python_model()
with torch.no_grad():
    torch.save(inner.model(**torch.load(sys.argv[4])).logits, sys.argv[5])
code = sys.modules["tasks.lib.base_cache"].__file__
print(json.dumps({"answers": list(answers), "code": code}))
"""


def serving_machine(root: Path, tracking_uri: str) -> tuple[dict, Path]:
    """Environment and working directory of a machine with only the registry and S3: its own
    HOME (so its own ~/.cache), no XDG_CACHE_HOME, the AWS_* variables of s3_env."""
    home, cwd = root / "home", root / "cwd"
    home.mkdir(parents=True)
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "XDG_CACHE_HOME"}
    env.update(HOME=str(home), MLFLOW_TRACKING_URI=tracking_uri)
    # `mlflow models serve` runs uvicorn from PATH: this interpreter's
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env, cwd


def change_weights(base: Path, out: Path) -> Path:
    """A copy of `base` with one weight nudged: a retrained base under the same name."""
    shutil.copytree(base, out)
    (weights,) = out.glob("*.safetensors")
    tensors = load_file(weights)
    name = next(k for k in sorted(tensors) if "q_proj" in k)
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, weights, metadata={"format": "pt"})
    return weights


@pytest.mark.slow
def test_a_version_from_an_s3_base_serves_anywhere_and_only_on_its_base(
    project, tiny_base, prefect_harness, s3_env, tmp_path, monkeypatch
):
    # The training machine: the base downloaded into its cache, an adapter trained on that copy,
    # the lineage and the version recorded as the flow records them.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "trainer-cache"))
    uri = upload_base(tiny_base)
    copy = fetch_base_model.fn(base_model=uri)
    ids, logits = trained_adapter(Path(copy), project / "adapter")
    model, tokenizer = load_adapted(copy, project / "adapter")
    answers = generate(model, tokenizer, PROMPTS, max_new_tokens=TOKENS)
    assert any(a.strip() for a in answers)
    tags = {**collect_lineage.fn(base_model=uri, weights_dir=copy), "adapter_sha256": "a"}
    run_id = open_run.fn(experiment="t", run_name="r", config={}, config_yaml="", tags={})
    version = register_adapter.fn(
        run_id=run_id, adapter_dir=str(project / "adapter"), base_model=copy,
        model_name="anywhere", tags=tags, max_new_tokens=4,
    )  # fmt: skip
    assert tags["base_model"] == uri and tags["base_model_sha256"] == weights_sha256(tiny_base)
    torch.save(dict(ids), tmp_path / "ids.pt")
    # Nothing of the training machine's files is left: its copy of the base, its adapter.
    shutil.rmtree(tmp_path / "trainer-cache")
    shutil.rmtree(project / "adapter")

    registry = f"sqlite:///{project / 'mlflow.db'}"
    env, cwd = serving_machine(tmp_path / "server", registry)
    model_uri = f"models:/anywhere/{version}"
    proc = subprocess.run(
        [sys.executable, "-c", LOAD, model_uri, json.dumps(PROMPTS), str(TOKENS),
         str(tmp_path / "ids.pt"), str(tmp_path / "logits.pt")],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded["answers"] == answers
    assert torch.equal(torch.load(tmp_path / "logits.pt"), logits)
    # It ran the code the version carries, and fetched the base into the serving machine's HOME.
    assert "/code/tasks/lib/" in loaded["code"] and not loaded["code"].startswith(str(REPO))
    s3_bases = tmp_path / "server" / "home" / ".cache" / "loraflow" / "s3-bases"
    assert len(list(s3_bases.iterdir())) == 1

    # `mlflow models serve` on the same machine (warm: the copy and its hashes are there).
    with served_model(model_uri, cwd, env) as url:
        body = {"inputs": PROMPTS, "params": {"max_new_tokens": TOKENS}}
        status, answer = post(f"{url}/invocations", body)
        assert status == 200, answer
        assert answer["predictions"] == answers

    # The base retrained under the same name: the same load is refused, naming both hashes.
    changed = change_weights(tiny_base, tmp_path / "retrained")
    location = parse_s3_uri(uri)
    boto3.client("s3").upload_file(str(changed), location.bucket, location.key(changed.name))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other-cache"))
    with pytest.raises(OtherBaseError) as e:
        mlflow.pyfunc.load_model(model_uri)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"base model {uri}: weights sha256 ")
    assert weights_sha256(changed.parent) in message and tags["base_model_sha256"] in message
    # Unless the caller says so: then it loads those weights, and answers differently.
    other = mlflow.pyfunc.load_model(model_uri, model_config={"allow_other_base": True})
    with torch.no_grad():
        assert not torch.equal(other.unwrap_python_model().model(**ids).logits, logits)
    # The same, said the way `mlflow models serve` takes it: MLflow's inference-config variable.
    monkeypatch.setenv("MLFLOW_PYFUNC_INFERENCE_CONFIG", json.dumps({"allow_other_base": True}))
    assert mlflow.pyfunc.load_model(model_uri).predict(PROMPTS[:1])
