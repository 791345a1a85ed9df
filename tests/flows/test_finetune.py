"""The whole flow under the Prefect test harness, on a tiny model, in an isolated project."""

import pytest
import yaml

from models.config.run import config_from_dict
from tasks.tracking import client

REQUIRED_TAGS = {
    "data_md5",
    "git_commit",
    "config_sha256",
    "base_model",
    "base_model_sha256",
    "method",
    "seed",
    "adapter_sha256",
    "data_prepared_key",
}


def aliases(model):
    return {k: str(v) for k, v in model.aliases.items()}


def config(tiny_base, **training):
    return config_from_dict(
        {
            "base_model": str(tiny_base),
            "data": {"path": "data", "max_seq_len": 64},
            "adapter": {
                "method": "lora",
                "r": 4,
                "alpha": 8,
                "dropout": 0.0,
                "target_modules": ["q_proj", "v_proj"],
            },
            "training": {
                "max_steps": 12,
                "batch_size": 8,
                "learning_rate": 3e-3,
                "warmup_steps": 0,
                "logging_steps": 4,
                **training,
            },
            "evaluation": {"max_examples": 16, "max_new_tokens": 8},
            "registry": {"model_name": "flowtest", "promote_metric": "eval_loss"},
        }
    )


def flow_run_artifacts(flow_run_id) -> dict:
    """The flow run's artifacts by key, as the dashboard reads them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as prefect_client:
        found = prefect_client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in found}


def test_flow_registers_promotes_and_keeps_a_better_champion(project, tiny_base, prefect_harness):
    from flows.finetune import finetune

    first_cfg = config(tiny_base)
    state = finetune(first_cfg, return_state=True)
    first = state.result()
    assert first.promoted and first.version == "1"
    assert first.report["adapter"]["eval_loss"] < first.report["base"]["eval_loss"]

    mlf = client()
    model = mlf.get_registered_model("flowtest")
    assert aliases(model) == {"champion": "1", "challenger": "1"}
    version = mlf.get_model_version("flowtest", "1")
    assert REQUIRED_TAGS <= set(version.tags)
    assert version.tags["adapter_sha256"] == first.adapter_sha256
    # The tokens it trained on: a complete preparation under that key (models.data.prepared).
    from models.data.prepared import default_cache_dir, read_complete

    prepared = read_complete(default_cache_dir() / version.tags["data_prepared_key"])
    assert prepared["parts"]["data"]["max_seq_len"] == 64
    assert version.tags["method"] == "lora" and version.tags["seed"] == "0"
    assert version.tags["config_sha256"] == first_cfg.sha256()
    dvc_md5 = yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"]
    assert version.tags["data_md5"] == dvc_md5 == first.data_md5

    run = mlf.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert REQUIRED_TAGS <= set(run.data.tags)
    assert run.data.metrics["trainable_params"] > 0
    assert "adapter_exact_match" in run.data.metrics and "base_eval_loss" in run.data.metrics
    assert run.data.params["adapter.r"] == "4"
    history = mlf.get_metric_history(first.run_id, "train_loss")
    assert [m.step for m in history] == [4, 8, 12]
    saved = mlf.download_artifacts(first.run_id, "config/loraflow.yaml")
    assert yaml.safe_load(open(saved)) == first_cfg.model_dump(mode="json")
    # The resolved config and the eval report travel with the adapter itself.
    assert (project / first.adapter_dir / "loraflow.yaml").read_text() == first_cfg.to_yaml()
    # The final checkpoint was written (the store exists) and, the adapter registered, cleared.
    assert list((project / ".loraflow" / "checkpoints").iterdir()) == []
    assert (project / first.adapter_dir / "eval_report.json").is_file()
    # Data was pushed to the DVC remote.
    assert any((project / ".loraflow" / "dvc-remote").rglob("*"))
    # For the people watching: progress and the loss curve on the flow run (and the curve on
    # the MLflow run), descriptions in the registry.
    artifacts = flow_run_artifacts(state.state_details.flow_run_id)
    progress = artifacts["training-progress"]
    assert progress.data == 100.0 and progress.description.startswith("step 12/12 · loss ")
    assert "](data:image/png;base64," in artifacts["loss-curve"].data
    png = mlf.download_artifacts(first.run_id, "plots/loss_curve.png", str(project))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    described = mlf.get_model_version("flowtest", "1").description
    head = f"**lora** adapter of `{tiny_base}`, data md5 `{first.data_md5[:12]}`, seed 0"
    assert described.startswith(head)
    losses = first.report["adapter"]["eval_loss"], first.report["base"]["eval_loss"]
    assert "| eval_loss | {:.4f} | {:.4f} |".format(*losses) in described
    assert described.endswith("**Promotion:** promoted: no champion yet")
    assert model.description.startswith("Adapters fine-tuned by loraflow")

    # A barely trained challenger is worse than the champion: registered, not promoted.
    second = finetune(config(tiny_base, max_steps=1, learning_rate=1e-6))
    assert second.version == "2" and not second.promoted
    assert "champion" in second.report
    assert abs(second.report["champion"]["eval_loss"] - first.report["adapter"]["eval_loss"]) < 1e-5
    model = mlf.get_registered_model("flowtest")
    assert aliases(model) == {"champion": "1", "challenger": "2"}
    tags = mlf.get_model_version("flowtest", "2").tags
    assert tags["promotion.outcome"] == "kept champion v1"
    assert tags["promotion.champion_version"] == "1"
    described = mlf.get_model_version("flowtest", "2").description
    assert f"**Promotion:** kept champion v1: {tags['promotion.reason']}" in described


def test_unchanged_inputs_skip_training_and_any_change_retrains(
    project, tiny_base, prefect_harness
):
    from prefect.client.orchestration import get_client

    from flows.finetune import finetune
    from tests.flows.test_events import loraflow_events, wait_for

    cfg = config(tiny_base, max_steps=4)
    first = finetune(cfg, skip_if_unchanged=True)  # no champion yet: trains
    assert first.promoted and not first.skipped

    again = finetune(cfg, skip_if_unchanged=True)
    assert again.skipped and again.version == "1" and again.report == {}
    assert again.reason == "unchanged since champion v1, skipped"
    with get_client(sync_client=True) as prefect_client:  # announced to automations
        skipped = wait_for(
            lambda: [
                e
                for e in loraflow_events(prefect_client, "flowtest")
                if e.event == "loraflow.model.skipped" and e.payload["data_md5"] == again.data_md5
            ],
            "loraflow.model.skipped event",
        )
    assert dict(skipped[0].resource)["loraflow.model.version"] == "1"
    mlf = client()
    assert len(mlf.search_model_versions("name='flowtest'")) == 1  # nothing registered
    runs = mlf.search_runs([mlf.get_experiment_by_name("loraflow").experiment_id])
    assert len(runs) == 1  # and no MLflow run opened

    # Without the switch, the same inputs train again (e.g. to check determinism).
    forced = finetune(cfg)
    assert not forced.skipped and forced.version == "2"

    # A config change (any field) retrains.
    changed = finetune(config(tiny_base, max_steps=5), skip_if_unchanged=True)
    assert not changed.skipped and changed.version == "3"

    # The check is against whatever is champion now: make v3 champion, its inputs skip. (New
    # data retrains: tests/flows/test_unchanged.py, through `loraflow run --skip-unchanged`,
    # which falls through to this flow with skip_if_unchanged.)
    from flows.promote import promote_version

    promote_version(model_name="flowtest", version="3", metric="eval_loss", force=True)
    assert finetune(config(tiny_base, max_steps=5), skip_if_unchanged=True).skipped


def test_a_failed_or_crashed_run_closes_its_mlflow_run_as_failed(
    project, tiny_base, prefect_harness, monkeypatch
):
    """The flow's state hooks mark the MLflow run FAILED, whether the flow fails (an error) or
    crashes (an interrupt); the error reaches the caller unchanged."""
    import flows.finetune
    from flows.finetune import finetune
    from models.errors import LoraflowError

    opened = []
    real_open_run = flows.finetune.open_run

    def recording_open_run(**kwargs):
        opened.append(real_open_run(**kwargs))
        return opened[-1]

    monkeypatch.setattr(flows.finetune, "open_run", recording_open_run)
    mlf = client()
    for error in (LoraflowError("injected: the GPU went away"), KeyboardInterrupt()):

        def failing_train(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(flows.finetune, "train", failing_train)
        with pytest.raises(type(error)) as raised:
            finetune(config(tiny_base))
        assert raised.value is error or str(raised.value) == str(error)
        assert mlf.get_run(opened[-1]).info.status == "FAILED", type(error).__name__
    assert len(opened) == 2 and flows.finetune._OPEN_RUNS == {}


def test_a_chat_run_registers_a_version_that_answers_a_conversation(
    project, tiny_base, prefect_harness
):
    """data.format chat end to end: the demo task as two-turn conversations in Parquet, the
    chatml template from the config, served through mlflow.pyfunc from a list of messages."""
    import json

    import mlflow
    import pandas as pd

    from flows.finetune import finetune
    from models.evaluation.serving import generate, load_adapted

    for split in ("train", "eval"):
        path = project / "data" / f"{split}.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        conversations = [
            {
                "messages": [
                    {"role": "user", "content": a["prompt"]},
                    {"role": "assistant", "content": a["completion"].strip()},
                    {"role": "user", "content": b["prompt"]},
                    {"role": "assistant", "content": b["completion"].strip()},
                ]
            }
            for a, b in zip(rows[::2], rows[1::2], strict=False)
        ]
        pd.DataFrame(conversations).to_parquet(project / "data" / f"{split}.parquet")
        path.unlink()
    raw = config(tiny_base).model_dump(mode="json")
    raw["data"].update(
        format="chat",
        chat_template="chatml",
        train_file="train.parquet",
        eval_file="eval.parquet",
        max_seq_len=160,
    )
    raw["evaluation"]["max_examples"] = 4
    result = finetune(config_from_dict(raw))
    assert result.promoted and result.version == "1"
    assert set(result.report) == {"base", "adapter"}

    loaded = mlflow.pyfunc.load_model("models:/flowtest@champion")
    messages = list(pd.read_parquet(project / "data" / "eval.parquet")["messages"][0])[:-1]
    messages = [dict(m) for m in messages]
    answer = loaded.predict(messages, params={"max_new_tokens": 8})
    model, tok = load_adapted(str(tiny_base), project / result.adapter_dir)
    assert answer == generate(model, tok, [messages], max_new_tokens=8, fmt="chat")
