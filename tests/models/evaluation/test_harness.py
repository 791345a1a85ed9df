"""lm-eval tasks on an already-loaded model (the forgetting guard): the figures are lm-eval's own,
named `<task>_<metric>`, and a task or gate metric that cannot be used is refused before
training."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from models.base_model.loading import load_base
from models.evaluation.harness import (
    HarnessError,
    HarnessSpec,
    check_tasks,
    direction,
    figure_name,
    harness_scores,
    task_manager,
)
from models.evaluation.serving import load_adapted
from tests.tasks.test_registry import trained_adapter

REPO = Path(__file__).resolve().parents[3]
SHIPPED = REPO / "configs" / "lm_eval"
LOADER = """import json
from pathlib import Path

import datasets


def load(**_metadata):
    rows = Path(__file__).with_name("{name}.jsonl").read_text().splitlines()
    return {{"test": datasets.Dataset.from_list([json.loads(r) for r in rows])}}
"""


def write_task(folder: Path, name: str, rows: list[dict], **config) -> Path:
    """A local lm-eval task `name` in `folder`: its YAML, its rows and a loader beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / f"{name}_rows.py").write_text(LOADER.format(name=name))
    text = yaml.safe_dump({"task": name, "test_split": "test", **config})
    text += f"custom_dataset: !function {name}_rows.load\n"
    (folder / f"{name}.yaml").write_text(text)
    return folder


def echo_task(folder: Path) -> Path:
    """A loglikelihood task (perplexity of the completion, and whether it is the greedy one):
    figures that change with any change of the model."""
    words = ["red cat", "big sun", "old tree", "blue river", "small dog", "warm house"]
    rows = [{"prompt": f"Repeat the words: {w}\nAnswer:", "answer": w} for w in words]
    return write_task(
        folder,
        "echo",
        rows,
        output_type="loglikelihood",
        doc_to_text="prompt",
        doc_to_target="answer",
        metric_list=[
            {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
        ],
    )


def test_figure_names_and_their_directions():
    tasks = ["facts", "facts_hard"]
    assert figure_name("facts", "acc") == "facts_acc"
    assert figure_name("gsm", "exact_match", "strict-match") == "gsm_exact_match_strict-match"
    assert figure_name("a/b", "acc", "x y") == "a-b_acc_x-y"  # '/' would read as a slice
    assert direction("facts_acc", tasks) == direction("facts_hard_acc_norm", tasks) == "max"
    assert direction("facts_perplexity", tasks) == "min"
    assert direction("facts_hard_brier_score", tasks) == "min"
    assert direction("facts_word_perplexity", tasks) == "min"
    assert direction("exact_match", tasks) is direction("other_acc", tasks) is None


def test_each_direction_is_the_one_lm_eval_registers_for_its_metric():
    """The recorded direction of a figure against lm-eval's own registry (an independent
    reference): lower is better for the perplexities, bits_per_byte, brier_score and ter."""
    from lm_eval.api.registry import is_higher_better

    lower = ["perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "brier_score"]
    metrics = [*lower, "ter", "acc", "acc_norm", "exact_match", "f1", "mcc", "bleu"]
    expected = {m: "max" if is_higher_better(m) else "min" for m in metrics}
    assert {m: direction(f"facts_{m}", ["facts"]) for m in metrics} == expected
    assert list(expected.values()).count("min") == 6


def test_scores_equal_what_lm_eval_reports_when_it_loads_the_models_itself(tiny_base, tmp_path):
    """Wrapping the loaded base (and the loaded PEFT model) gives exactly lm-eval's own figures
    for the same weights loaded by lm-eval from their directories (`hf`, with `peft=`)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    folder = echo_task(tmp_path / "tasks")
    for f in SHIPPED.iterdir():
        shutil.copy(f, folder)
    spec = HarnessSpec(tasks=["echo", "general_facts"], include_path=str(folder), limit=12)
    trained_adapter(tiny_base, tmp_path / "adapter")
    manager = task_manager(spec)

    def own(**model_args) -> dict[str, float]:
        got = lm_eval.simple_evaluate(
            model="hf",
            model_args={
                "pretrained": str(tiny_base),
                "device": "cpu",
                "dtype": "float32",
                **model_args,
            },  # fmt: skip
            tasks=spec.tasks,
            task_manager=TaskManager(include_path=str(folder), include_defaults=False),
            limit=spec.limit,
            batch_size=4,
            bootstrap_iters=0,
        )["results"]
        return {
            figure_name(task, *key.split(",")): value
            for task, values in got.items()
            for key, value in values.items()
            if "," in key and "_stderr" not in key
        }

    base = harness_scores(*load_base(str(tiny_base)), spec, 4, manager)
    adapted = harness_scores(*load_adapted(str(tiny_base), tmp_path / "adapter"), spec, 4, manager)
    assert set(base) == {
        "echo_perplexity", "echo_acc", "general_facts_acc", "general_facts_acc_norm"
    }  # fmt: skip
    assert base == pytest.approx(own(), rel=1e-6)
    assert adapted == pytest.approx(own(peft=str(tmp_path / "adapter")), rel=1e-6)
    # The adapter is scored, not the base under it.
    assert adapted["echo_perplexity"] != pytest.approx(base["echo_perplexity"], rel=1e-4)


def test_the_shipped_task_loads_and_reports_what_a_guard_can_name():
    spec = HarnessSpec(tasks=["general_facts"], include_path=str(SHIPPED))
    check_tasks(spec, ["exact_match", "general_facts_acc", "general_facts_acc_norm"])
    rows = (SHIPPED / "general_facts.jsonl").read_text().splitlines()
    assert len(rows) == 48
    with pytest.raises(HarnessError) as refused:
        check_tasks(spec, ["general_facts_accuracy"])
    assert str(refused.value) == (
        "registry: 'general_facts_accuracy' is not reported by evaluation.lm_eval.tasks (they "
        "report: general_facts_acc, general_facts_acc_norm)"
    )


def test_a_gate_metric_read_the_wrong_way_round_is_refused(tmp_path):
    """loraflow reads `acc` as higher-is-better; a task that says otherwise is refused."""
    folder = echo_task(tmp_path / "tasks")
    config = yaml.safe_load((folder / "echo.yaml").read_text().split("custom_dataset")[0])
    config["metric_list"][1]["higher_is_better"] = False
    write_task(folder, "echo", [{"prompt": "a", "answer": "b"}], **{
        k: v for k, v in config.items() if k not in ("task", "test_split")
    })  # fmt: skip
    with pytest.raises(HarnessError, match="'echo_acc': the task says lower is better"):
        check_tasks(HarnessSpec(tasks=["echo"], include_path=str(folder)), ["echo_acc"])


def test_a_missing_include_path_is_named(tmp_path):
    with pytest.raises(HarnessError) as refused:
        check_tasks(HarnessSpec(tasks=["facts"], include_path=str(tmp_path / "nope")), [])
    assert str(refused.value).startswith(
        f"evaluation.lm_eval.include_path: no folder '{tmp_path / 'nope'}'"
    )
