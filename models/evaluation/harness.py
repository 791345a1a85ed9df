"""Tasks of EleutherAI's lm-evaluation-harness (`lm_eval`) on an already-loaded model: the
forgetting guard of evaluation.lm_eval.

An adapter can gain on its own task and lose what the base model could do. Each candidate (base,
adapter, champion) is scored in-process on the configured lm-eval tasks, wrapped as lm-eval's
HFLM around the model and tokenizer the evaluation loaded anyway; nothing is downloaded: a task
reads its local data (`include_path`, a folder of task YAMLs). Each figure lm-eval reports is
recorded as `<task>_<metric>` (`<task>_<metric>_<filter>` for a filter other than lm-eval's
"none"), e.g. `general_facts_acc`, so a run logs `adapter_general_facts_acc` beside
`adapter_exact_match`, and registry.guards can name it.

lm_eval is imported only here, inside the functions, and only when tasks are configured: the
import alone takes seconds, and lm-eval's index of its own tasks (~14,700 names) tens of seconds,
built only when a configured name is not one of include_path's.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from models.errors import LoraflowError

# lm-eval metrics where lower is better (its own registry says so); every other one is read as
# higher is better, which the checks confirm against each task before training.
LOWER_IS_BETTER = (
    "perplexity",
    "word_perplexity",
    "byte_perplexity",
    "bits_per_byte",
    "brier_score",
    "ter",
)
_UNSAFE = re.compile(r"[^\w.\-]")  # kept out of recorded names ('/' marks a slice)


class HarnessError(LoraflowError):
    """An lm-eval setting that cannot be used; the message names the field, the value and the
    fix."""


@dataclass(frozen=True)
class HarnessSpec:
    """evaluation.lm_eval: task names, the folder of local task YAMLs, docs per task, shots."""

    tasks: list[str] = field(default_factory=list)
    include_path: str | None = None
    limit: int | None = None
    num_fewshot: int | None = None


def figure_name(task: str, metric: str, filter_name: str = "none") -> str:
    """The name one lm-eval figure is recorded under (without the `<model>_` prefix)."""
    name = f"{task}_{metric}" if filter_name == "none" else f"{task}_{metric}_{filter_name}"
    return _UNSAFE.sub("-", name)


def task_of(name: str, tasks: list[str]) -> str | None:
    """The configured task a figure name belongs to (the longest that prefixes it), or None."""
    owners = [t for t in tasks if name.startswith(f"{t}_") and len(name) > len(t) + 1]
    return max(owners, key=len, default=None)


def direction(name: str, tasks: list[str]) -> str | None:
    """ "max"/"min" for an lm-eval figure of a configured task; None for any other name."""
    task = task_of(name, tasks)
    if task is None:
        return None
    metric = name[len(task) + 1 :]
    lower = any(metric == m or metric.startswith(f"{m}_") for m in LOWER_IS_BETTER)
    return "min" if lower else "max"


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise HarnessError(
            "evaluation.lm_eval needs the lm-eval package: pip install 'loraflow[lm-eval]' "
            "(or remove evaluation.lm_eval.tasks)"
        ) from None
    return lm_eval, TaskManager


def task_manager(spec: HarnessSpec):
    """lm-eval's TaskManager for spec.tasks: include_path's tasks only when it holds them all,
    else with lm-eval's own tasks too (include_path first). A name found in neither is a
    HarnessError naming it, what is there that comes closest, and the fix."""
    _, TaskManager = _lm_eval()
    where = "evaluation.lm_eval.include_path"
    if spec.include_path is not None and not Path(spec.include_path).is_dir():
        raise HarnessError(
            f"{where}: no folder {spec.include_path!r} (a folder of lm-eval task YAMLs, "
            "relative to the working directory)"
        )
    manager = None
    if spec.include_path is not None:
        manager = TaskManager(include_path=spec.include_path, include_defaults=False)
    if manager is None or any(t not in manager.all_tasks for t in spec.tasks):
        manager = TaskManager(include_path=spec.include_path)
    for task in spec.tasks:
        if task not in manager.all_tasks:
            near = difflib.get_close_matches(task, manager.all_tasks, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            found = f"in {spec.include_path} nor " if spec.include_path else ""
            raise HarnessError(
                f"evaluation.lm_eval.tasks: unknown task {task!r} (not {found}among lm-eval's "
                f"own tasks); {hint}fix the name, or set {where} to the folder of its YAML"
            )
    return manager


def check_tasks(spec: HarnessSpec, gate_metrics: list[str]) -> None:
    """Before training: every task is known and loads (its data is read), and every lm-eval
    figure the promotion gate names is one a task reports, in the direction loraflow reads it."""
    if not spec.tasks:
        return
    manager = task_manager(spec)
    try:
        loaded = manager.load(list(spec.tasks))["tasks"]
    except Exception as e:  # lm-eval and datasets raise many kinds; all are the task's setup
        raise HarnessError(f"evaluation.lm_eval.tasks {spec.tasks}: cannot load ({e})") from None
    reported = {
        figure_name(name, metric): higher
        for name, task in loaded.items()
        for metric, higher in task.higher_is_better().items()
    }
    for metric in gate_metrics:
        if task_of(metric, spec.tasks) is None:
            continue
        base = next((k for k in sorted(reported, key=len, reverse=True)
                     if metric == k or metric.startswith(f"{k}_")), None)  # fmt: skip
        if base is None:
            raise HarnessError(
                f"registry: {metric!r} is not reported by evaluation.lm_eval.tasks (they "
                f"report: {', '.join(sorted(reported))})"
            )
        if reported[base] != (direction(metric, spec.tasks) == "max"):
            raise HarnessError(
                f"registry: {metric!r}: the task says {'higher' if reported[base] else 'lower'}"
                " is better, loraflow would read it the other way; guard another metric"
            )


def harness_scores(
    model, tokenizer, spec: HarnessSpec, batch_size: int, manager=None
) -> dict[str, float]:
    """spec.tasks on `model` (a loaded transformers model, or a PEFT model around one) with
    `tokenizer`, in-process through lm-eval's simple_evaluate: {`<task>_<metric>`: value} for
    every numeric figure it reports (standard errors left out). `manager`: a TaskManager from
    task_manager(spec), reused across candidates (one is built where none is given)."""
    lm_eval, _ = _lm_eval()
    from lm_eval.models.huggingface import HFLM

    manager = manager or task_manager(spec)
    results = lm_eval.simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size),
        tasks=list(spec.tasks),
        task_manager=manager,
        limit=spec.limit,
        num_fewshot=spec.num_fewshot,
        bootstrap_iters=0,  # no standard errors: not compared by any guard
        log_samples=False,
    )
    figures = {}
    for task, values in results["results"].items():
        for key, value in values.items():
            metric, _, filter_name = key.partition(",")
            if not filter_name or metric.endswith("_stderr") or isinstance(value, bool):
                continue
            if isinstance(value, int | float) and math.isfinite(value):
                figures[figure_name(task, metric, filter_name)] = float(value)
    return figures
