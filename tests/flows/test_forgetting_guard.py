"""The forgetting guard end to end: an adapter that gains on its own task but loses on an lm-eval
task the base model was better at is registered, not promoted, and nothing becomes champion."""

import logging
import random

from demo.task import (
    NAMES,
    NUMBERS,
    RULES,
    TASK_WORDS,
    VERBS,
    format_completion,
    format_prompt,
)
from tasks.tracking import client
from tests.conftest import api_log_messages, at_level
from tests.flows.test_finetune import aliases
from tests.flows.test_finetune import config as finetune_config
from tests.models.evaluation.test_harness import write_task


def plain_answer_task(folder):
    """Demo-task prompts with two answers, the task's own (the right one) and words the demo
    task never answers with (names, verbs, numbers), scored by the Brier score of the choice:
    continuous, lower is better. The tiny base leans to the task's answer; 12 steps of LoRA at
    a high learning rate leave the adapter better on the task's loss but less sure of that
    choice (measured: 0.512 -> 0.709 on this CPU, seeded). A gain on the task with a loss on
    an lm-eval task, which is what the guard is for."""
    rng = random.Random(3)
    rows = []
    for _ in range(12):
        words = rng.sample(TASK_WORDS, 4)
        instruction, rule = RULES[rng.choice(sorted(RULES))]
        plain = f"{rng.choice(NAMES)} {rng.choice(VERBS)} {rng.choice(NUMBERS)}"
        task_answer = format_completion(rule(words)).strip()
        prompt = format_prompt(instruction, words)
        rows.append({"prompt": prompt, "choices": [plain, task_answer], "answer": 1})
    return write_task(
        folder,
        "plain_answer",
        rows,
        output_type="multiple_choice",
        doc_to_text="prompt",
        doc_to_choice="choices",
        doc_to_target="answer",
        metric_list=[{"metric": "brier_score", "higher_is_better": False}],
    )


def test_an_adapter_that_forgets_is_registered_but_never_champion(
    project, tiny_base, prefect_harness, monkeypatch
):
    from flows.finetune import finetune

    for run_logger in ("prefect.flow_runs", "prefect.task_runs"):  # prints are logged at INFO
        at_level(monkeypatch, run_logger, logging.INFO)

    raw = finetune_config(tiny_base, learning_rate=1e-2).model_dump()
    raw["evaluation"]["lm_eval"] = {
        "tasks": ["plain_answer"],
        "include_path": str(plain_answer_task(project / "lm_eval")),
    }
    raw["registry"]["guards"] = {
        "plain_answer_brier_score": {"max_regression": 0.0, "against": "base"}
    }
    config = type(finetune_config(tiny_base)).model_validate(raw)

    state = finetune(config, return_state=True)
    summary = state.result()
    base, adapter = summary.report["base"], summary.report["adapter"]
    # Better on its own task, worse on the lm-eval one: the guard holds it back.
    assert adapter["eval_loss"] < base["eval_loss"]
    assert adapter["plain_answer_brier_score"] > base["plain_answer_brier_score"]
    assert not summary.promoted
    assert summary.reason.startswith("no champion yet; guard broken: plain_answer_brier_score ")
    assert summary.reason.endswith("(broken)")

    mlf = client()
    assert aliases(mlf.get_registered_model("flowtest")) == {"challenger": "1"}
    tags = mlf.get_model_version("flowtest", "1").tags
    assert tags["promotion.outcome"] == "not promoted"
    assert tags["promotion.guard.plain_answer_brier_score"].endswith("(broken)")
    metrics = mlf.get_run(summary.run_id).data.metrics
    assert metrics["adapter_plain_answer_brier_score"] == adapter["plain_answer_brier_score"]
    assert metrics["base_plain_answer_brier_score"] == base["plain_answer_brier_score"]

    # Nothing lm-eval's dependencies print reaches the run's log: `datasets` hashes functions
    # with dill, which disassembles them to stdout and reads that back; under the flow's
    # log_prints the disassembly went to the Prefect log instead (a dozen lines a candidate).
    logged = api_log_messages(state.state_details.flow_run_id)
    assert any("evaluated base, adapter" in line for line in logged), logged
    assert not [line for line in logged if "LOAD_GLOBAL" in line or "RETURN_VALUE" in line]

    # `loraflow promote` re-runs the gate the version was registered under, its guard included:
    # still held back. Forced (an operator's decision), it goes in and says so.
    from flows.promote import promote_version

    again = promote_version(model_name="flowtest", version="1", metric="eval_loss")
    assert not again.moves_champion and again.outcome == "not promoted", again
    assert again.reason.startswith("no champion yet; guard broken: plain_answer_brier_score ")
    assert aliases(mlf.get_registered_model("flowtest")) == {"challenger": "1"}
    forced = promote_version(model_name="flowtest", version="1", metric="eval_loss", force=True)
    assert forced.outcome == "promoted (forced)" and "guard broken" in forced.reason, forced
    assert aliases(mlf.get_registered_model("flowtest")) == {"challenger": "1", "champion": "1"}
