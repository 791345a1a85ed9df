"""Bad input through the `loraflow` entry point: one line, an exit code, nothing written.

Every case goes through `flows.cli.main` in-process, as the command does: config errors stop at
parsing; everything else stops at the first stage of the command's flow (its checks), under the
session's Prefect harness.
"""

import pytest

from tests.bad_input_formats import FORMAT_CASES
from tests.bad_input_setups import (
    alias_missing,
    base_dir,
    check_with,
    compare_with,
    duplicates,
    missing_bucket,
    missing_version,
    no_cuda,
    refused_credentials,
    run_with,
    tiny_arch,
    tracking_down,
    with_split,
)
from tests.conftest import REPO
from tests.test_cli import prefect_console, rows, written

# Each case: (id, setup(ctx) -> loraflow arguments, exit code, fragment of the message).
# Exit 2 cases must print exactly one stderr line `loraflow: error: ...` naming the problem and
# where; exit 0 cases are warnings the check prints on stdout. No case may write anything.
LM_EVAL = str(REPO / "configs" / "lm_eval")
LONG = "one two three four five six seven eight nine ten eleven twelve " * 3
TRAIN = [("Repeat the words: a b\nAnswer:", " a b"), ("Repeat: c\nAnswer:", " c")]

BAD_INPUTS = [
    # config
    ("unknown key", run_with(trainingg={"max_steps": 1}), 2, "run.yaml: unknown key 'trainingg'"),
    (
        "wrong type",
        run_with(training={"max_steps": "many"}),
        2,
        "run.yaml: training.max_steps: Input should be a valid integer",
    ),
    (
        "unknown method",
        run_with(adapter={"method": "lora_xl"}),
        2,
        "run.yaml: adapter.method: unknown method 'lora_xl'",
    ),
    ("rank below one", run_with(adapter={"r": 0}), 2, "adapter.r: must be >= 1 (got 0)"),
    ("alpha not positive", run_with(adapter={"alpha": 0}), 2, "adapter.alpha: must be > 0"),
    (
        "dropout outside [0,1)",
        run_with(adapter={"dropout": 1.0}),
        2,
        "adapter.dropout: must be in [0, 1) (got 1.0)",
    ),
    (
        "learning rate not positive",
        run_with(training={"learning_rate": 0}),
        2,
        "training.learning_rate: must be > 0 (got 0.0)",
    ),
    (
        "targets match nothing",
        run_with(adapter={"target_modules": ["query_key_value"]}),
        2,
        "adapter.target_modules ['query_key_value'] match no module of the base model; "
        "its linear layers are: down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj",
    ),
    (
        "qlora without cuda",
        no_cuda(run_with(adapter={"method": "qlora"})),
        2,
        "adapter.method qlora needs a CUDA GPU",
    ),
    (
        "vera on a non-linear layer",
        run_with(adapter={"method": "vera", "r": 16, "target_modules": ["embed_tokens"]}),
        2,
        "adapter.target_modules ['embed_tokens'] are Embedding layers, not Linear; "
        "adapter.method vera adapts Linear layers only; its linear layers are: down_proj,",
    ),
    (
        "target is a norm layer",
        run_with(adapter={"target_modules": ["q_proj", "norm"]}),
        2,
        "['norm'] are LlamaRMSNorm layers, not Linear and Embedding; adapter.method lora adapts",
    ),
    (
        "packing on a base whose attention ignores position_ids",
        tiny_arch("opt", training={"packing": True}),
        2,
        "(OPTForCausalLM) lets packed examples attend to each other (logits differ from each",
    ),
    (
        "gradient checkpointing on a base whose code lacks it",
        tiny_arch("openai_gpt", training={"gradient_checkpointing": True}),
        2,
        "(OpenAIGPTLMHeadModel) does not support gradient checkpointing; set training.gradient",
    ),
    (
        "max_seq_len below 8",
        run_with(data={"max_seq_len": 4}),
        2,
        "data.max_seq_len: must be >= 8 (got 4)",
    ),
    (
        "split path escapes the data dir",
        run_with(data={"train_file": "../secrets.jsonl"}),
        2,
        "data.train_file: must be a file inside data.path (got '../secrets.jsonl')",
    ),
    (
        "compare, an unknown method",
        compare_with("lora,lora_xl"),
        2,
        "method lora_xl: adapter.method: unknown method 'lora_xl'",
    ),
    (
        "compare, one method that cannot run here",
        no_cuda(compare_with("lora,qlora")),
        2,
        "adapter.method qlora needs a CUDA GPU",
    ),
    # data
    ("missing data dir", run_with(data={"path": "nope"}), 2, "nope: data directory not found"),
    ("empty split", with_split("train.jsonl", b""), 2, "data/train.jsonl: split is empty"),
    (
        "malformed json",
        with_split("train.jsonl", rows(TRAIN[0]) + b'{"prompt": \n'),
        2,
        "data/train.jsonl:2: malformed JSON",
    ),
    (
        "missing field",
        with_split("eval.jsonl", rows(TRAIN[0]) + b'{"prompt": "a"}\n'),
        2,
        "data/eval.jsonl:2: missing field 'completion'",
    ),
    (
        "non-utf8 bytes",
        with_split("train.jsonl", rows(TRAIN[0]) + b'{"prompt": "caf\xe9", "completion": "x"}\n'),
        2,
        "data/train.jsonl:2: not valid UTF-8 (byte 15)",
    ),
    (
        "examples too long, rejected",
        with_split(
            "train.jsonl", rows(TRAIN[0], (LONG, " x"), (LONG, " y")), data={"max_seq_len": 24}
        ),
        2,
        "data/train.jsonl:2: 2 example(s) longer than data.max_seq_len=24 tokens",
    ),
    (
        "examples too long, truncated",
        with_split(
            "train.jsonl",
            rows(TRAIN[0], (LONG, " x"), (LONG, " y")),
            command=check_with,
            data={"max_seq_len": 24, "too_long": "truncate"},
        ),
        0,
        "warning: 2 example(s) longer than data.max_seq_len=24 tokens will be truncated",
    ),
    (
        "eval examples duplicate train ones",
        duplicates,
        0,
        "warning: 3 eval examples also appear in the train split",
    ),
    *FORMAT_CASES,
    # model
    (
        "base model path missing",
        run_with(base_model="./no/such/model"),
        2,
        "base_model ./no/such/model: directory not found",
    ),
    ("base model without config.json", base_dir("empty"), 2, "no config.json in the directory"),
    (
        "pickle-only weights",
        base_dir("pickle"),
        2,
        "only pickle weights (pytorch_model.bin); loraflow loads safetensors only",
    ),
    (
        "remote code needed",
        base_dir("remote-code"),
        2,
        "needs remote code (auto_map in config.json); set base_model_trust_remote_code: true",
    ),
    # evaluation and the promotion gate
    (
        "unknown metric",
        run_with(evaluation={"metrics": ["exact_match", "bleu"]}),
        2,
        "run.yaml: evaluation.metrics: unknown metric 'bleu'; built in: exact_match, token_f1",
    ),
    (
        "guard on a metric not computed",
        run_with(registry={"guards": {"chrf": {"max_regression": 0.01}}}),
        2,
        "registry.guards.chrf: 'chrf' is not computed; add it to evaluation.metrics (computed: "
        "eval_loss, perplexity, exact_match)",
    ),
    (
        "tie-breaker not computed",
        run_with(registry={"tie_breaker": "rouge_l"}),
        2,
        "registry.tie_breaker: 'rouge_l' is not computed; add it to evaluation.metrics",
    ),
    (
        "slice field not in the eval data",
        run_with(evaluation={"slice_field": "task"}),
        2,
        "data/eval.jsonl:1: missing field 'task' (evaluation.slice_field)",
    ),
    (
        "custom metric that does not import",
        run_with(evaluation={"metrics": ["exact_match", "team_metrics_nowhere:recall"]}),
        2,
        "evaluation.metrics 'team_metrics_nowhere:recall': cannot import 'team_metrics_nowhere'",
    ),
    # the forgetting guard: lm-eval tasks (configs/lm_eval)
    (
        "unknown lm-eval task",
        run_with(evaluation={"lm_eval": {"tasks": ["general_fact"], "include_path": LM_EVAL}}),
        2,
        f"evaluation.lm_eval.tasks: unknown task 'general_fact' (not in {LM_EVAL} nor among "
        "lm-eval's own tasks); did you mean 'general_facts'? fix the name, or set "
        "evaluation.lm_eval.include_path to the folder of its YAML",
    ),
    (
        "guard on an lm-eval figure its task does not report",
        run_with(
            evaluation={"lm_eval": {"tasks": ["general_facts"], "include_path": LM_EVAL}},
            registry={"guards": {"general_facts_accuracy": {"max_regression": 0}}},
        ),
        2,
        "registry: 'general_facts_accuracy' is not reported by evaluation.lm_eval.tasks (they "
        "report: general_facts_acc, general_facts_acc_norm)",
    ),
    # registry / export
    (
        "model name MLflow rejects",
        run_with(registry={"model_name": "team/model"}),
        2,
        "registry.model_name: 'team/model' is not a valid model name",
    ),
    (
        "model name escaping a directory",
        lambda ctx: ["promote", "--model", "../../x"],
        2,
        "--model: '../../x' is not a valid model name",
    ),
    (
        "model uri escaping a directory",
        lambda ctx: ["export", "--model", "models:/..@champion", "--to", "s3://b/p"],
        2,
        "models:/..@champion: '..' is not a valid model name",
    ),
    (
        "export of a model that does not exist",
        missing_version("export"),
        2,
        "models:/ghost@champion: registered model 'ghost' does not exist",
    ),
    (
        "reproduce of a model that does not exist",
        missing_version("reproduce"),
        2,
        "models:/ghost/1: registered model 'ghost' does not exist",
    ),
    (
        "alias that does not exist",
        alias_missing,
        2,
        "models:/lonely@challenger: alias 'challenger' points to no version of model 'lonely'",
    ),
    (
        "unreachable tracking server",
        tracking_down,
        2,
        "is unreachable (connection refused)",
    ),
    (
        "compare, unreachable tracking server",
        compare_with("lora,lora_fa", tracking_down),
        2,
        "is unreachable (connection refused)",
    ),
    (
        "missing bucket",
        missing_bucket,
        2,
        "s3://no-such-bucket-q7: bucket does not exist at http://127.0.0.1:",
    ),
    (
        "refused credentials",
        refused_credentials,
        2,
        "s3://guarded: credentials rejected at http://127.0.0.1:",
    ),
]


class Ctx:
    def __init__(self, project, tiny_base, monkeypatch, request):
        self.project, self.tiny_base = project, tiny_base
        self.monkeypatch, self.request = monkeypatch, request


@pytest.fixture(scope="module")
def s3_auth_server():
    """An S3 API that checks signatures (moto with auth on): made-up credentials are refused."""
    from tests.conftest import moto_server

    with moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as url:
        yield url


@pytest.mark.parametrize(
    ("setup", "code", "message"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_fails_in_one_line_and_writes_nothing(
    project, tiny_base, monkeypatch, request, capsys, prefect_harness, setup, code, message
):
    """The `loraflow` entry point, called in-process (a flow start, about a second, per case)."""
    from flows.cli import main

    argv = setup(Ctx(project, tiny_base, monkeypatch, request))
    before = written(project)
    console = prefect_console(monkeypatch)
    capsys.readouterr()
    got = main(argv)
    out, err = capsys.readouterr()
    assert console.getvalue() == ""  # a run refused at its checks: Prefect prints nothing
    assert got == code, err
    if code:
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("loraflow: error: ") and message in lines[0], lines[0]
    else:
        assert message in out, out
        assert out.strip().endswith("ok")
    # Nothing trained, registered, pushed or uploaded.
    assert written(project) == before
    assert not (project / ".loraflow" / "runs").exists()
    assert not (project / "data.dvc").exists()
