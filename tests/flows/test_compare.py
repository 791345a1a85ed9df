"""The compare flow: one data version, a parent run with a child per method, a version each."""

import pytest

from models.config.run import ConfigError, config_from_dict
from tasks.tracking import client


def config(tiny_base):
    return config_from_dict(
        {
            "base_model": str(tiny_base),
            "data": {"path": "data", "max_seq_len": 64},
            "adapter": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
            "training": {
                "max_steps": 6,
                "batch_size": 8,
                "learning_rate": 3e-3,
                "warmup_steps": 0,
                "logging_steps": 3,
            },
            "evaluation": {"max_examples": 8, "max_new_tokens": 4},
            "registry": {"model_name": "cmp", "experiment": "cmp", "promote_metric": "eval_loss"},
        }
    )


def test_compare_trains_each_method_into_child_runs(project, tiny_base, prefect_harness):
    from flows.compare import compare

    rows = compare(config(tiny_base), ["lora", "lora_fa", "vera"])
    assert [r["method"] for r in rows] == ["lora", "lora_fa", "vera"]
    by = {r["method"]: r for r in rows}
    assert by["lora_fa"]["trainable_params"] * 2 == by["lora"]["trainable_params"]
    assert by["vera"]["trainable_params"] < by["lora_fa"]["trainable_params"]
    assert all(r["eval_loss"] < r["base_eval_loss"] for r in rows if r["method"] != "vera")

    mlf = client()
    aliases = {k: str(v) for k, v in mlf.get_registered_model("cmp").aliases.items()}
    assert aliases == {"lora": "1", "lora_fa": "2", "vera": "3"}
    experiment = mlf.get_experiment_by_name("cmp")
    runs = mlf.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 3
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert {c.data.tags["data_md5"] for c in children} == {parents[0].data.tags["data_md5"]}
    parent_metrics = parents[0].data.metrics
    assert parent_metrics["lora_trainable_params"] == by["lora"]["trainable_params"]
    artifacts = {a.path for a in mlf.list_artifacts(parents[0].info.run_id, "comparison")}
    assert artifacts == {"comparison/comparison.png", "comparison/table.json"}


def test_compare_rejects_bad_method_before_training(tiny_base):
    from flows.compare import method_configs

    with pytest.raises(ConfigError, match="method nope: adapter.method: unknown method"):
        method_configs(config(tiny_base), ["lora", "nope"])
    with pytest.raises(ConfigError, match="dropout must be 0 for delta_lora"):
        raw = config(tiny_base).model_copy(
            update={"adapter": config(tiny_base).adapter.model_copy(update={"dropout": 0.1})}
        )
        method_configs(raw, ["delta_lora"])
