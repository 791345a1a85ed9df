"""Promotion as its own flow: re-run the gate for a version, or move `champion` by hand."""

from __future__ import annotations

from prefect import flow
from pydantic import Field

from models.config.run import RegistryConfig
from models.registry.promotion import METRIC_DIRECTIONS, Decision
from tasks.preflight import check_promotion
from tasks.promotion import promote, recorded_gate
from tasks.registry import find_champion


@flow(name="promote", flow_run_name="promote-{model_name}", log_prints=True)
def promote_version(
    model_name: str = Field(..., description="Registered model name (registry.model_name)"),
    version: str | None = Field(
        None, description="Version to promote; empty = the version behind alias `challenger`"
    ),
    metric: str = Field(
        RegistryConfig.model_fields["promote_metric"].default,
        description="Gate metric: " + ", ".join(METRIC_DIRECTIONS),
    ),
    min_improvement: float = Field(
        RegistryConfig.model_fields["min_improvement"].default,
        description="Required gain over the champion",
    ),
    force: bool = Field(
        False, description="Move `champion` even if not better (rollback); recorded as forced"
    ),
) -> Decision:
    """Compare a version's recorded eval metric with the champion's and move `champion` if better.

    Stages:
      1. check: model name and metric valid, tracking server up, the version exists (default:
         alias `challenger`) and its run recorded the metric; the gate it was registered under
         (registry.guards and tie_breaker from the config its run recorded) read back
      2. promote: decided against the champion under the promotion lock, recorded on the version
    Uses the metrics recorded on each version's MLflow run (the same eval split the pipeline
    used; the base model's figures of the version's run for guards against the base), so it
    trains and evaluates nothing. `force` is for rollbacks and manual decisions: it moves
    `champion` whatever the gate says, and is recorded as forced.
    """
    challenger = check_promotion(model_name=model_name, version=version, metric=metric)
    gate = recorded_gate(challenger, metric, min_improvement)
    champion = find_champion(model_name, download=False)
    return promote(
        model_name=model_name,
        version=challenger.version,
        gate=gate,
        challenger=challenger.figures(),
        champion_version=champion.version if champion else None,
        champion=champion.figures() if champion else None,
        force=force,
        base=challenger.base_figures(),
    )
