"""The `evaluation` section of the run configuration, the promotion guards of `registry`, and
the check that the promotion gate names only metrics the evaluation computes.

Its own module so models/config/run.py stays one screenful per section; LoraflowConfig nests it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from models.config.data import _Section
from models.evaluation.metrics import LOSS_METRICS, check_specs, metric_name

if TYPE_CHECKING:
    from models.config.run import RegistryConfig


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


def check_gate(registry: RegistryConfig, evaluation: EvaluationConfig, data_format: str) -> None:
    """Every metric the promotion gate names is one the evaluation computes (and, for plain
    text, one that needs no answer to match). Raises ValueError naming the field."""
    computed = [*LOSS_METRICS, *map(metric_name, evaluation.metrics)]
    named = [("registry.promote_metric", registry.promote_metric)]
    if registry.tie_breaker:
        named.append(("registry.tie_breaker", registry.tie_breaker))
    named += [(f"registry.guards.{m}", m) for m in registry.guards]
    for where, metric in named:
        if metric not in computed:
            raise ValueError(
                f"{where}: {metric!r} is not computed; add it to evaluation.metrics "
                f"(computed: {', '.join(computed)})"
            )
        if data_format == "text" and metric not in LOSS_METRICS:
            # Plain text has no answer to match: promotion must be decided by the loss.
            raise ValueError(
                f"{where} {metric} needs answers to match; with data.format text use "
                "eval_loss or perplexity"
            )
    for metric, guard in registry.guards.items():
        if guard.per_slice and not evaluation.slice_field:
            raise ValueError(
                f"registry.guards.{metric}.per_slice needs evaluation.slice_field (the data "
                "field to slice by)"
            )
