from pathlib import Path

import pytest

from models.config.file import apply_overrides, load_config
from models.config.run import ConfigError, LoraflowConfig, config_from_dict

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    config = load_config(path)
    assert isinstance(config, LoraflowConfig)
    # Each run config starts with a comment saying what it is for and the command that runs it.
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    assert len(header) >= 2, "start with: what the config is for, then the command that runs it"
    assert any("loraflow " in line or "make " in line for line in header[1:]), header


def test_overrides_parse_values_as_yaml(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("base_model: some/model\nadapter: {r: 8}\n")
    config = load_config(
        cfg,
        [
            "adapter.r=16",
            "adapter.target_modules=[q_proj,v_proj]",
            "training.learning_rate=0.0005",
            "data.path=elsewhere",
        ],
    )
    assert config.adapter.r == 16
    assert config.adapter.target_modules == ["q_proj", "v_proj"]
    assert config.training.learning_rate == 0.0005
    assert config.data.path == "elsewhere"


def test_config_hash_is_stable_and_sensitive():
    a = config_from_dict({"base_model": "m"})
    b = config_from_dict({"base_model": "m"})
    c = config_from_dict({"base_model": "m", "adapter": {"r": 4}})
    assert a.sha256() == b.sha256()
    assert a.sha256() != c.sha256()
    assert "base_model: m" in a.to_yaml()


def test_apply_overrides_does_not_mutate_input():
    raw = {"adapter": {"r": 8}}
    out = apply_overrides(raw, ["adapter.r=2"])
    assert raw == {"adapter": {"r": 8}} and out == {"adapter": {"r": 2}}


BAD = [
    ({"base_model": "m", "adapterz": {}}, "unknown key 'adapterz'"),
    ({"base_model": "m", "adapter": {"rank": 3}}, "unknown key 'adapter.rank'"),
    ({"base_model": "m", "adapter": {"method": "nope"}}, "adapter.method: unknown method 'nope'"),
    ({"base_model": "m", "adapter": {"r": 0}}, "adapter.r: must be >= 1 (got 0)"),
    ({"base_model": "m", "adapter": {"alpha": 0}}, "adapter.alpha: must be > 0 (got 0.0)"),
    ({"base_model": "m", "adapter": {"dropout": 1.0}}, "adapter.dropout: must be in [0, 1)"),
    ({"base_model": "m", "adapter": {"dropout": -0.1}}, "must be in [0, 1) (got -0.1)"),
    ({"base_model": "m", "training": {"save_steps": -1}}, "training.save_steps: must be >= 0"),
    ({"base_model": "m", "training": {"cpu_threads": 0}}, "must be >= 1 or empty (got 0)"),
    ({"base_model": "m", "export": {"concurrency": 0}}, "export.concurrency: must be >= 1"),
    (
        {"base_model": "m", "training": {"lr_scheduler": "cosin"}},
        "training.lr_scheduler: unknown value 'cosin'; choose one of linear, cosine, constant",
    ),
    ({"base_model": "m", "adapter": {"target_modules": []}}, "adapter.target_modules"),
    ({"base_model": "m", "training": {"learning_rate": 0}}, "training.learning_rate: must be > 0"),
    ({"base_model": "m", "training": {"max_steps": "many"}}, "training.max_steps"),
    ({"base_model": "m", "data": {"max_seq_len": 4}}, "data.max_seq_len: must be >= 8"),
    ({"base_model": "m", "registry": {"model_name": "../../x"}}, "registry.model_name"),
    (
        {"base_model": "m", "registry": {"promote_metric": "bleu"}},
        "registry.promote_metric: 'bleu' is not computed",
    ),
    ({"base_model": "m", "export": {"enabled": True}}, "export.to must be an s3:// URI"),
    ({}, "missing required key 'base_model'"),
    (
        {"base_model": "m", "data": {"format": "sharegpt"}},
        "data.format: unknown value 'sharegpt'; choose one of prompt_completion, chat, alpaca",
    ),
    ({"base_model": "m", "data": {"train_on": "user"}}, "data.train_on: unknown value 'user'"),
    ({"base_model": "m", "data": {"role_names": {"bot": "robot"}}}, "data.role_names.bot"),
    ({"base_model": "m", "data": {"train_file": "train.txt"}}, "must end in one of .jsonl"),
    (
        {"base_model": "m", "data": {"format": "text"}},
        "run.yaml: registry.promote_metric exact_match needs answers to match; with data.format",
    ),
    (
        {"base_model": "m", "registry": {"promote_metric": "chrf"}},
        "run.yaml: registry.promote_metric: 'chrf' is not computed; add it to evaluation.metrics",
    ),
    (
        {"base_model": "m", "registry": {"guards": {"eval_loss": {"max_regression": -0.1}}}},
        "registry.guards.eval_loss.max_regression: Input should be greater than or equal to 0",
    ),
    (
        {
            "base_model": "m",
            "registry": {"guards": {"eval_loss": {"max_regression": 0, "per_slice": True}}},
        },
        "registry.guards.eval_loss.per_slice needs evaluation.slice_field",
    ),
    (
        {"base_model": "m", "evaluation": {"metrics": ["chrf", "team:chrf"]}},
        "evaluation.metrics: metric name 'chrf' is used twice",
    ),
    (
        {
            "base_model": "m",
            "adapter": {"method": "delta_lora", "dropout": 0},
            "training": {"sharding": "fsdp", "num_processes": 2},
        },
        "training.sharding fsdp cannot train adapter.method delta_lora: delta_lora moves the "
        "frozen base weights",
    ),
    (
        {"base_model": "m", "adapter": {"method": "dora"}, "training": {"sharding": "fsdp"}},
        "training.sharding fsdp cannot train adapter.method dora",
    ),
    (
        {
            "base_model": "m",
            "training": {"sharding": "fsdp", "num_processes": 2, "dtype": "float16"},
        },
        "training.sharding fsdp checkpoints cannot keep float16's loss scale",
    ),
    (
        {
            "base_model": "m",
            "adapter": {"method": "qlora"},
            "training": {"sharding": "fsdp", "dtype": "float32", "save_steps": 0},
        },
        "training.sharding fsdp with adapter.method qlora trains in bfloat16",
    ),
    (
        {"base_model": "m", "adapter": {"method": "qlora"}, "training": {"sharding": "fsdp"}},
        "training.sharding fsdp with adapter.method qlora does not checkpoint",
    ),
    (
        {
            "base_model": "m",
            "training": {
                "sharding": "fsdp",
                "num_nodes": 2,
                "rendezvous": "n0:29400",
                "checkpoint_store": "s3://b/ck",
            },
        },
        "training.checkpoint_store must be a directory all nodes share for a sharded run on "
        "several nodes (got 's3://b/ck')",
    ),
    (
        {"base_model": "m", "training": {"num_nodes": 2}},
        "training.rendezvous must be host:port when num_nodes > 1 (got '')",
    ),
    # the forgetting guard (evaluation.lm_eval); an unknown task name is refused at the checks
    (
        {"base_model": "m", "registry": {"guards": {"general_facts_acc": {"max_regression": 0}}}},
        "registry.guards.general_facts_acc: 'general_facts_acc' is not computed",
    ),
    (
        {
            "base_model": "m",
            "evaluation": {"lm_eval": {"tasks": ["facts"]}},
            "registry": {"guards": {"general_facts_acc": {"max_regression": 0}}},
        },
        "'general_facts_acc' is not computed; add it to evaluation.metrics (computed: "
        "eval_loss, perplexity, exact_match, or <task>_<metric> of facts)",
    ),
    (
        {
            "base_model": "m",
            "evaluation": {"lm_eval": {"tasks": ["facts"]}, "slice_field": "task"},
            "registry": {"guards": {"facts_acc": {"max_regression": 0, "per_slice": True}}},
        },
        "registry.guards.facts_acc.per_slice: an lm-eval figure has no slices",
    ),
    (
        {"base_model": "m", "evaluation": {"lm_eval": {"tasks": ["facts", "facts"]}}},
        "evaluation.lm_eval.tasks: a task is named twice (['facts', 'facts'])",
    ),
    (
        {"base_model": "m", "evaluation": {"lm_eval": {"limit": 0}}},
        "evaluation.lm_eval.limit: must be >= 1",
    ),
]


def test_an_lm_eval_figure_can_gate_promotion_in_its_direction():
    config = config_from_dict(
        {
            "base_model": "m",
            "data": {"format": "text"},  # lm-eval figures need no answers to match
            "evaluation": {"lm_eval": {"tasks": ["facts", "wiki"]}},
            "registry": {
                "promote_metric": "eval_loss",
                "guards": {
                    "facts_acc": {"max_regression": 0.02, "against": "base"},
                    "wiki_word_perplexity": {"max_regression": 0.5},
                },
            },
        }
    )
    gate = config.gate()
    assert gate.directions == {
        "eval_loss": "min", "facts_acc": "max", "wiki_word_perplexity": "min"
    }  # fmt: skip
    assert [(g.metric, g.against) for g in gate.guards] == [
        ("facts_acc", "base"), ("wiki_word_perplexity", "champion")
    ]  # fmt: skip
    assert config.check_spec("b").gate_metrics == [
        "eval_loss", "facts_acc", "wiki_word_perplexity"
    ]  # fmt: skip
    assert config.eval_spec().lm_eval.tasks == ["facts", "wiki"]


@pytest.mark.parametrize(("raw", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_config_is_one_line_naming_the_key(raw, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw, source="run.yaml")
    text = str(err.value)
    assert message in text
    assert text.startswith("run.yaml")
    assert "\n" not in text


def test_bad_override_and_missing_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("base_model: m\n")
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_config(cfg, ["adapter.r"])
    with pytest.raises(ConfigError, match="adapter.r: must be >= 1"):
        load_config(cfg, ["adapter.r=0"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    cfg.write_text("base_model: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML at line"):
        load_config(cfg)


def test_bounds_are_in_the_schema_the_run_form_reads():
    """The Prefect run form and docs/configuration.md read the bounds from the JSON schema."""
    defs = LoraflowConfig.model_json_schema()["$defs"]
    adapter, training = defs["AdapterConfig"]["properties"], defs["TrainingConfig"]["properties"]
    assert adapter["r"]["minimum"] == 1
    assert adapter["alpha"]["exclusiveMinimum"] == 0
    assert (adapter["dropout"]["minimum"], adapter["dropout"]["exclusiveMaximum"]) == (0, 1)
    assert "lora_fa" in adapter["method"]["enum"]
    assert training["cpu_threads"]["anyOf"][0]["minimum"] == 1
    assert defs["GuardConfig"]["properties"]["max_regression"]["minimum"] == 0
