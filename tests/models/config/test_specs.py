"""The stage specs built from the config: every setting a stage uses reaches it, under the
config's name, and each spec survives JSON (distributed training sends its spec to torchrun)."""

import dataclasses
import json

import pytest

from models.config.run import LoraflowConfig, config_from_dict
from models.config.specs import CheckSpec, DataSpec, EvalSpec, TrainSpec

# One changed (valid) value for every setting of the sections the stages read. A new config
# field must be added here, which makes it say which stages use it: nothing is dropped silently.
CHANGED = {
    "base_model": "another-base",
    "base_model_trust_remote_code": True,
    "data.path": "elsewhere",
    "data.train_file": "t.jsonl",
    "data.eval_file": "e.jsonl",
    "data.prompt_field": "question",
    "data.completion_field": "answer",
    "data.max_seq_len": 99,
    "data.too_long": "truncate",
    "data.format": "chat",
    "data.text_field": "body",
    "data.messages_field": "conversations",
    "data.role_field": "from",
    "data.content_field": "value",
    "data.role_names": {"asker": "user"},
    "data.chat_template": "chatml",
    "data.train_on": "last",
    "data.dvc_remote": "backup",
    "data.source": "s3://incoming/chat",
    "adapter.method": "rslora",
    "adapter.r": 3,
    "adapter.alpha": 5.0,
    "adapter.dropout": 0.2,
    "adapter.target_modules": ["q_proj"],
    "adapter.seed": 7,
    "adapter.delta_scale": 0.25,
    "adapter.loraplus_lr_ratio": 4.0,
    "training.max_steps": 7,
    "training.learning_rate": 1e-4,
    "training.batch_size": 3,
    "training.grad_accum_steps": 2,
    "training.warmup_steps": 1,
    "training.weight_decay": 0.1,
    "training.lr_scheduler": "cosine",
    "training.logging_steps": 5,
    "training.device": "cuda",  # where training.kernels: liger and training.compile can run
    "training.dtype": "float32",
    "training.output_dir": "elsewhere/runs",
    "training.deployment": "train-adapter/train",
    "training.num_processes": 2,
    "training.sharding": "fsdp",
    "training.num_nodes": 2,
    "training.rendezvous": "node-0.train:29400",
    "training.packing": True,
    "training.cpu_threads": 1,
    "training.gradient_checkpointing": True,
    "training.save_steps": 0,
    "training.checkpoint_store": "s3://bucket/checkpoints",
    "training.deterministic": True,
    "training.chunked_loss": "off",
    "training.kernels": "liger",
    "training.batch_tokens": 512,
    "training.compile": True,
    "evaluation.batch_size": 4,
    "evaluation.max_new_tokens": 5,
    "evaluation.max_examples": 9,
    "evaluation.metrics": ["exact_match", "token_f1"],
    "evaluation.slice_field": "task",
    "evaluation.lm_eval": {"tasks": ["general_facts"], "include_path": "configs/lm_eval"},
}
SECTIONS = ("data", "adapter", "training", "evaluation")
DATA = {f"data.{name}" for name in DataSpec.__dataclass_fields__}
# Where a run's results go, or which machine trains: run-only arguments, in no spec.
RUN_ONLY = {
    "base_model",
    "data.dvc_remote",
    "data.source",
    "training.output_dir",
    "training.deployment",
}
RUN_ONLY |= {"training.checkpoint_store"}
USED_BY = {
    "check": {
        "base_model_trust_remote_code",
        *DATA,
        "adapter.method",
        "adapter.target_modules",
        "training.packing",
        "training.gradient_checkpointing",
        "training.chunked_loss",
        "training.kernels",
        "training.compile",
        "training.sharding",
        "evaluation.metrics",
        "evaluation.slice_field",
        "evaluation.lm_eval",  # tasks known and loading before training
    },
    "train": {
        "base_model_trust_remote_code",
        *DATA,
        *(key for key in CHANGED if key.startswith(("adapter.", "training."))),
    }
    - RUN_ONLY,
    "eval": {
        "base_model_trust_remote_code",
        *DATA,
        *(key for key in CHANGED if key.startswith("evaluation.")),
        "training.device",  # evaluation runs where training did
        "training.chunked_loss",  # and computes its loss the same way
    },
}


def specs(config: LoraflowConfig) -> dict:
    return {
        "check": config.check_spec("base"),
        "train": config.train_spec("base"),
        "eval": config.eval_spec(),
    }


def config_with(changes: dict) -> LoraflowConfig:
    """The default config with `changes` (dotted key -> value) applied."""
    raw = LoraflowConfig(base_model="base").model_dump(mode="json")
    for key, value in changes.items():
        *sections, name = key.split(".")
        node = raw
        for section in sections:
            node = node[section]
        node[name] = value
    return config_from_dict(raw)


def test_every_setting_of_the_stage_sections_is_listed():
    fields = {
        f"{section}.{name}" if section else name
        for section, model in [(None, LoraflowConfig)]
        + [(s, LoraflowConfig.model_fields[s].annotation) for s in SECTIONS]
        for name in model.model_fields
        if section or name not in (*SECTIONS, "registry", "export")
    }
    assert set(CHANGED) == fields


# Settings valid only with another one (used by the same stages).
NEEDS = {"training.num_nodes": "training.rendezvous"}


@pytest.mark.parametrize("key", sorted(CHANGED))
def test_a_setting_changes_exactly_the_specs_of_the_stages_that_use_it(key):
    before = specs(LoraflowConfig(base_model="base"))
    after = specs(config_with({k: CHANGED[k] for k in (key, NEEDS.get(key, key))}))
    changed = {stage for stage in before if before[stage] != after[stage]}
    assert changed == {stage for stage, keys in USED_BY.items() if key in keys}


def test_spec_fields_carry_the_config_names_and_values():
    config = config_with(CHANGED)
    train = config.train_spec("the-base")
    assert train.base_model == config.check_spec("the-base").base_model == "the-base"
    assert train.adapter == config.adapter.to_spec() and train.method == "rslora"
    assert train.trust_remote_code is True
    shared = set(TrainSpec.__dataclass_fields__) & set(type(config.training).model_fields)
    assert shared >= {"cpu_threads", "packing", "gradient_checkpointing", "save_steps"}
    for name in shared:
        assert getattr(train, name) == getattr(config.training, name), name
    for name in DataSpec.__dataclass_fields__:
        assert getattr(train.data, name) == getattr(config.data, name), name
    evaluation = config.eval_spec()
    for name in set(EvalSpec.__dataclass_fields__) & set(type(config.evaluation).model_fields):
        value = getattr(config.evaluation, name)
        value = value.to_spec() if name == "lm_eval" else value  # a section: its own spec
        assert getattr(evaluation, name) == value, name
    assert train.data == evaluation.data == config.check_spec("b").data
    assert train.data.train_path == "elsewhere/t.jsonl"
    assert evaluation.data.eval_path == "elsewhere/e.jsonl"


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], "all-linear"])
def test_specs_round_trip_through_json(targets):
    config = config_with(CHANGED).model_copy(deep=True)
    config.adapter.target_modules = targets
    for spec in specs(config).values():
        again = type(spec).from_dict(json.loads(json.dumps(spec.to_dict())))
        assert again == spec and type(again.data) is DataSpec
    train = config.train_spec("base")
    assert type(TrainSpec.from_dict(json.loads(json.dumps(train.to_dict()))).adapter) is type(
        train.adapter
    )


def test_specs_are_frozen():
    spec = LoraflowConfig(base_model="base").check_spec("base")
    assert isinstance(spec, CheckSpec)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.method = "dora"


def test_with_data_dir_and_adapter_dir():
    config = LoraflowConfig(base_model="base", training={"output_dir": "out"})
    moved = config.with_data_dir("/pulled/abc")
    assert moved.data.path == "/pulled/abc" and config.data.path == "data"
    assert moved.train_spec("base").data.path == "/pulled/abc"
    assert config.adapter_dir("run7") == "out/run7/adapter"
