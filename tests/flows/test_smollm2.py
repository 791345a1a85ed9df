"""configs/smollm2_lora.yaml end to end on the real model (SmolLM2-135M-Instruct), few steps:
its own data builder, DVC version, a few training steps, evaluation, registration, the champion
answering a string and a list of messages through mlflow.pyfunc as evaluation answered them, and
the export to S3 that plain transformers loads and that answers the same."""

import json

import boto3
import mlflow
import pytest
import torch
import yaml

from demo.smollm2_task import build_smollm2_task_data
from models.config.file import load_config
from tasks.lib import s3
from tests.conftest import REPO
from tests.flows.test_export import new_bucket
from tests.flows.test_finetune import flow_run_artifacts

QUESTION = "Write the ticket line for this note.\nOn Monday, Anna goes to Rome, leaving from Oslo."


@pytest.mark.slow
def test_smollm2_trains_registers_serves_and_exports(
    project, smollm2, prefect_harness, s3_env, tmp_path
):
    from flows.finetune import finetune
    from models.evaluation.serving import generate, load_adapted

    (project / "smollm2").symlink_to(smollm2)  # the config's ./smollm2
    build_smollm2_task_data(project / "data-smollm2", n_train=16, n_eval=4)
    bucket = new_bucket()
    config = load_config(
        REPO / "configs" / "smollm2_lora.yaml",
        [
            "training.max_steps=3",
            "training.batch_size=4",
            "training.logging_steps=1",
            "evaluation.max_new_tokens=12",
            "evaluation.lm_eval.tasks=[]",  # tested in tests/flows/test_forgetting_guard.py
            "registry.guards={}",
            "export.enabled=true",
            f"export.to=s3://{bucket}/real",
            "export.dtype=float32",
        ],
    )
    state = finetune(config, return_state=True)
    result = state.result()
    assert result.promoted and result.version == "1"
    assert result.report["adapter"]["eval_loss"] < result.report["base"]["eval_loss"]
    dvc = yaml.safe_load((project / "data-smollm2.dvc").read_text())["outs"][0]
    assert dvc["path"] == "data-smollm2" and dvc["md5"] == result.data_md5
    tags = mlflow.MlflowClient().get_model_version("loraflow-smollm2", "1").tags
    assert tags["base_model"] == str(smollm2.resolve())

    # What a reviewer reads: eval examples with the base's and the adapter's answers side by
    # side, beside the adapter, on the MLflow run and in the flow run's artifacts.
    eval_lines = (project / "data-smollm2" / "eval.jsonl").read_text().splitlines()
    conversations = [json.loads(line)["messages"] for line in eval_lines]
    rows = json.loads((project / result.adapter_dir / "eval_examples.json").read_text())
    assert [(r["prompt"], r["expected"]) for r in rows] == [
        (c[-2]["content"], c[-1]["content"]) for c in conversations
    ]
    assert all(set(r) == {"prompt", "expected", "base", "adapter"} for r in rows)
    logged = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/evaluation/examples.json")
    assert logged["columns"] == ["prompt", "expected", "base", "adapter"]
    assert [row[3] for row in logged["data"]] == [r["adapter"] for r in rows]
    shown = flow_run_artifacts(state.state_details.flow_run_id)["evaluation-examples"]
    assert json.loads(shown.data) == rows

    # The registry round trip: a list of messages and a prompt, answered as evaluation would.
    champion = mlflow.pyfunc.load_model("models:/loraflow-smollm2@champion")
    conversation = [{"role": "user", "content": QUESTION}]
    params = {"max_new_tokens": 12}
    served = [champion.predict(conversation, params=params)[0]]
    served += champion.predict({"prompt": QUESTION}, params=params)
    model, tok = load_adapted(str(smollm2), project / result.adapter_dir)
    expected = generate(model, tok, [conversation, QUESTION], max_new_tokens=12, fmt="chat")
    assert served == expected and served[0] == served[1]
    assert "<|im_end|>" not in served[0] and "<|im_start|>" not in served[0]

    # The export: merged weights that plain transformers loads, with the same logits and answer.
    manifest = s3.download_verified(
        boto3.client("s3"), s3.parse_s3_uri(f"s3://{bucket}/real/loraflow-smollm2/v1"), tmp_path
    )
    assert manifest["lineage"]["version"] == "1"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    merged_tok = AutoTokenizer.from_pretrained(tmp_path)
    assert merged_tok.chat_template == tok.chat_template
    ids = merged_tok.apply_chat_template(
        conversation, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.no_grad():
        difference = (merged(ids).logits - model(input_ids=ids).logits).abs().max().item()
    assert difference < 1e-3
    out = merged.generate(ids, max_new_tokens=12, do_sample=False)
    answer = merged_tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert answer.strip() == served[0].strip()
