"""The `evaluation` section of the run configuration, the promotion guards of `registry`, and
the check that the promotion gate names only metrics the evaluation computes.

Its own module so models/config/run.py stays one screenful per section; LoraflowConfig nests it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from models.config.data import _Section
from models.evaluation.harness import HarnessSpec, task_of
from models.evaluation.metrics import LOSS_METRICS, check_specs, metric_name

if TYPE_CHECKING:
    from models.config.run import RegistryConfig


class LmEvalConfig(_Section):
    """lm-evaluation-harness tasks scored on base, adapter and champion (docs/evaluation.md)."""

    tasks: list[str] = Field(
        default_factory=list,
        description="lm-eval task names, each looked up in include_path, then among lm-eval's "
        "own tasks; each figure is recorded as `<model>_<task>_<metric>` (e.g. "
        "adapter_general_facts_acc) and can be a registry guard; empty = off.",
    )
    include_path: str | None = Field(
        None,
        description="Folder of local lm-eval task YAMLs (and their data), e.g. configs/lm_eval; "
        "runs stay offline when every task reads local files.",
    )
    limit: int | None = Field(
        None, ge=1, description="Score only the first N documents of each task; empty = all."
    )
    num_fewshot: int | None = Field(
        None, ge=0, description="Few-shot examples per prompt; empty = each task's own setting."
    )

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: list[str]) -> list[str]:
        for task in v:
            if not task.strip() or task != task.strip():
                raise ValueError(f"task name {task!r} is empty or has spaces around it")
        if len(set(v)) != len(v):
            raise ValueError(f"a task is named twice ({v})")
        return v

    def to_spec(self) -> HarnessSpec:
        return HarnessSpec(**self.model_dump())


class EvaluationConfig(_Section):
    """How base, adapter and champion are evaluated on the eval split."""

    batch_size: int = Field(32, description="Eval batch size (loss and generation).")
    max_new_tokens: int = Field(16, description="Generation budget for the generated answers.")
    max_examples: int | None = Field(None, description="Evaluate only the first N examples.")
    metrics: list[str] = Field(
        default_factory=lambda: ["exact_match"],
        description="Scores of the greedy answers against the completions, each recorded as "
        "`<model>_<name>` beside eval_loss and perplexity: exact_match, token_f1, rouge_l, chrf "
        "(0-1, higher is better), or module:function from your repo, called with "
        "(predictions, references) (docs/evaluation.md).",
    )
    slice_field: str | None = Field(
        None,
        description="Eval record field (e.g. task) by which every figure is also reported per "
        "slice, as `<model>_<metric>/<slice>`; empty = no slices.",
    )
    lm_eval: LmEvalConfig = Field(
        default_factory=LmEvalConfig,
        description="lm-evaluation-harness tasks scored on every candidate (the forgetting "
        "guard); off unless tasks are named.",
    )

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: list[str]) -> list[str]:
        return check_specs(v)


class GuardConfig(_Section):
    """One promotion guard: a metric the challenger may not make worse than the champion's."""

    max_regression: float = Field(
        ..., ge=0, description="Largest allowed worsening, in the metric's units (0 = none)."
    )
    per_slice: bool = Field(
        False, description="Hold on every slice of evaluation.slice_field as well."
    )
    against: Literal["champion", "base"] = Field(
        "champion",
        description="Compared with the champion's figure, or with the base model's on this run "
        "(base: a forgetting guard, which also holds a first version back).",
    )


def check_gate(registry: RegistryConfig, evaluation: EvaluationConfig, data_format: str) -> None:
    """Every metric the promotion gate names is one the evaluation computes (and, for plain
    text, one that needs no answer to match). A `<task>_<metric>` name of an
    evaluation.lm_eval task is accepted here; the checks confirm the task reports it (they load
    lm-eval). Raises ValueError naming the field."""
    computed = [*LOSS_METRICS, *map(metric_name, evaluation.metrics)]
    tasks = evaluation.lm_eval.tasks
    named = [("registry.promote_metric", registry.promote_metric)]
    if registry.tie_breaker:
        named.append(("registry.tie_breaker", registry.tie_breaker))
    named += [(f"registry.guards.{m}", m) for m in registry.guards]
    for where, metric in named:
        if metric not in computed and task_of(metric, tasks):
            continue  # an lm-eval figure: scored on the models themselves, any data format
        if metric not in computed:
            lm_eval = f", or <task>_<metric> of {', '.join(tasks)}" if tasks else ""
            raise ValueError(
                f"{where}: {metric!r} is not computed; add it to evaluation.metrics "
                f"(computed: {', '.join(computed)}{lm_eval})"
            )
        if data_format == "text" and metric not in LOSS_METRICS:
            # Plain text has no answer to match: promotion must be decided by the loss.
            raise ValueError(
                f"{where} {metric} needs answers to match; with data.format text use "
                "eval_loss or perplexity"
            )
    for metric, guard in registry.guards.items():
        if guard.per_slice and task_of(metric, tasks):
            raise ValueError(
                f"registry.guards.{metric}.per_slice: an lm-eval figure has no slices; set "
                "per_slice: false"
            )
        if guard.per_slice and not evaluation.slice_field:
            raise ValueError(
                f"registry.guards.{metric}.per_slice needs evaluation.slice_field (the data "
                "field to slice by)"
            )
