"""Promotion as its own flow: re-run the gate for a version, or move `champion` by hand."""

from __future__ import annotations

from prefect import flow
from pydantic import Field

from models.config import ConfigError
from models.promotion import METRIC_DIRECTIONS, Decision
from tasks.registry import CHALLENGER, RegistryError, find_champion, promote, resolve_version


def _recorded(ref, metric: str) -> float:
    value = ref.recorded_metrics.get(f"adapter_{metric}")
    if value is None:
        raise RegistryError(
            f"models:/{ref.model_name}/{ref.version}: its run recorded no adapter_{metric}"
        )
    return value


@flow(name="promote", flow_run_name="promote-{model_name}", log_prints=True)
def promote_version(
    model_name: str = Field(..., description="Registered model name (registry.model_name)"),
    version: str | None = Field(
        None, description="Version to promote; empty = the version behind alias `challenger`"
    ),
    metric: str = Field("exact_match", description="Gate metric: " + ", ".join(METRIC_DIRECTIONS)),
    min_improvement: float = Field(0.0, description="Required gain over the champion"),
    force: bool = Field(
        False, description="Move `champion` even if not better (rollback); recorded as forced"
    ),
) -> Decision:
    """Compare a version's recorded eval metric with the champion's and move `champion` if better.

    Uses the metrics recorded on each version's MLflow run (the same eval split the pipeline
    used), so it trains and evaluates nothing. `force` is for rollbacks and manual decisions.
    """
    if metric not in METRIC_DIRECTIONS:
        raise ConfigError(f"metric: must be one of {sorted(METRIC_DIRECTIONS)}, got {metric!r}")
    target = f"models:/{model_name}/{version}" if version else f"models:/{model_name}@{CHALLENGER}"
    challenger = resolve_version(target, download=False)
    champion = find_champion(model_name, download=False)
    if champion is not None and champion.version == challenger.version:
        return Decision(
            False, metric, _recorded(challenger, metric), _recorded(champion, metric),
            f"v{challenger.version} is already the champion",
        )  # fmt: skip
    return promote(
        model_name=model_name,
        version=challenger.version,
        metric=metric,
        challenger_value=_recorded(challenger, metric),
        champion_version=champion.version if champion else None,
        champion_value=_recorded(champion, metric) if champion else None,
        min_improvement=min_improvement,
        force=force,
    )
