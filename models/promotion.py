"""The promotion gate: does the challenger beat the champion on the chosen metric?"""

from __future__ import annotations

from dataclasses import dataclass

# Metric name -> "max" when higher is better, "min" when lower is better.
METRIC_DIRECTIONS = {"exact_match": "max", "eval_loss": "min", "perplexity": "min"}


@dataclass(frozen=True)
class Decision:
    """The gate's verdict with both figures, as recorded on the model version."""

    promote: bool
    metric: str
    challenger: float
    champion: float | None
    reason: str


def decide(metric: str, challenger: float, champion: float | None, min_improvement: float = 0.0):
    """Promote when there is no champion, or the challenger is better by more than min_improvement.

    A tie is not an improvement: the champion stays.
    """
    if champion is None:
        return Decision(True, metric, challenger, None, "no champion yet")
    gain = challenger - champion if METRIC_DIRECTIONS[metric] == "max" else champion - challenger
    better = gain > min_improvement
    verdict = "better" if better else "not better"
    reason = (
        f"{metric} {challenger:.4f} vs champion {champion:.4f}: {verdict} "
        f"(gain {gain:+.4f}, needed > {min_improvement:g})"
    )
    return Decision(better, metric, challenger, champion, reason)


# What decides whether a retrain could change anything: the data version, the resolved config and
# the base model's weights. Equal on the champion's version -> nothing new to learn.
LINEAGE_KEYS = ("data_md5", "config_sha256", "base_model_sha256")


def changed_inputs(current: dict[str, str], champion_tags: dict[str, str]) -> list[str]:
    """Lineage keys whose value differs from the champion's (a missing tag counts as changed)."""
    return [k for k in LINEAGE_KEYS if not current.get(k) or current.get(k) != champion_tags.get(k)]
