"""Promotion decisions: does a version become champion, and what is recorded about it.

Plain functions of the figures: the registry I/O around them (reading the champion under the
promotion lock, moving the alias, writing the tags) is in tasks/promotion.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# Metric name -> "max" when higher is better, "min" when lower is better.
METRIC_DIRECTIONS = {"exact_match": "max", "eval_loss": "min", "perplexity": "min"}

# Outcomes as recorded in the version's `promotion.outcome` tag; a kept champion is recorded as
# f"kept champion v{n}".
PROMOTED, FORCED, ALREADY = "promoted", "promoted (forced)", "already the champion"


@dataclass(frozen=True)
class Decision:
    """The verdict on one version, with the figures it was made on.

    promote: the version is champion once this decision is carried out (the pipeline exports
    it); `moves_champion` says whether the alias has to move for that.
    """

    promote: bool
    metric: str
    challenger: float
    champion: float | None
    reason: str
    outcome: str = ""
    champion_version: str | None = None
    note: str = ""

    @property
    def moves_champion(self) -> bool:
        """Whether carrying the decision out moves alias `champion` (not there yet, not kept)."""
        return self.outcome in (PROMOTED, FORCED)

    def tags(self) -> dict[str, str]:
        """The `promotion.*` tags to record on the version. None for a version that already is
        the champion: its promotion was recorded when it happened and is kept as it was."""
        if self.outcome == ALREADY:
            return {}
        record = {
            "promotion.outcome": self.outcome,
            "promotion.metric": self.metric,
            "promotion.challenger": f"{self.challenger:.6g}",
            "promotion.champion": "none" if self.champion is None else f"{self.champion:.6g}",
            "promotion.champion_version": self.champion_version or "none",
            "promotion.reason": self.reason,
        }
        if self.note:
            record["promotion.note"] = self.note
        return record

    def read_back(self, version: str, champion_now: str | None) -> Decision:
        """The decision with a note when alias `champion` did not read back as `version` right
        after it was set (someone moved it outside the lock: by hand, another tool)."""
        if not self.moves_champion or champion_now == version:
            return self
        seen = f"alias champion read back as {_v(champion_now)} right after setting it"
        return replace(self, note=f"{self.note}; {seen}" if self.note else seen)


def decide(metric: str, challenger: float, champion: float | None, min_improvement: float = 0.0):
    """The gate: promote when there is no champion, or the challenger is better by more than
    min_improvement. A tie is not an improvement: the champion stays."""
    if champion is None:
        return Decision(True, metric, challenger, None, "no champion yet", PROMOTED)
    gain = challenger - champion if METRIC_DIRECTIONS[metric] == "max" else champion - challenger
    better = gain > min_improvement
    verdict = "better" if better else "not better"
    reason = (
        f"{metric} {challenger:.4f} vs champion {champion:.4f}: {verdict} "
        f"(gain {gain:+.4f}, needed > {min_improvement:g})"
    )
    return Decision(better, metric, challenger, champion, reason, PROMOTED if better else "")


def decide_promotion(
    *,
    version: str,
    metric: str,
    challenger: float,
    seen_version: str | None,
    seen_value: float | None,
    current_version: str | None,
    current_value: float | None,
    min_improvement: float = 0.0,
    force: bool = False,
) -> Decision:
    """Whether `version` becomes champion, with the reason and what to record.

    seen_version/seen_value: the champion the caller compared against (read before its
    evaluation; seen_value may be its figure on this run's eval split). current_version/
    current_value: the champion now, read under the promotion lock, and the figure its run
    recorded (adapter_<metric>; None if it recorded none). In order:
      - force: promoted regardless (an operator's rollback), the gate's verdict kept as reason;
      - `version` already is the champion (an earlier attempt of this same promotion moved the
        alias, or an operator asks again): it stays champion and nothing is recorded again;
      - the champion moved since the caller read it: decided against the new champion's
        recorded figure, with a note saying so;
      - a champion without the figure is not overwritten;
      - else the gate (`decide`).
    """
    if force:
        gate = decide(metric, challenger, seen_value, min_improvement)
        reason = f"forced by operator ({gate.reason})"
        return Decision(True, metric, challenger, seen_value, reason, FORCED, seen_version)
    if current_version == version:
        reason = f"v{version} is already the champion"
        return Decision(True, metric, challenger, current_value, reason, ALREADY, version)
    champion_version, champion, note = seen_version, seen_value, ""
    if current_version != seen_version:
        note = (
            f"champion moved from {_v(seen_version)} to {_v(current_version)} while deciding; "
            f"decided against {_v(current_version)}"
        )
        champion_version, champion = current_version, current_value
    kept = f"kept champion v{champion_version}"
    if champion_version is not None and champion is None:
        reason = f"champion v{champion_version} recorded no adapter_{metric}; not overwritten"
        return Decision(False, metric, challenger, None, reason, kept, champion_version, note)
    gate = decide(metric, challenger, champion, min_improvement)
    outcome = PROMOTED if gate.promote else kept
    return replace(gate, outcome=outcome, champion_version=champion_version, note=note)


def recorded_key(metric: str) -> str:
    """The name under which a version's run records the adapter's figure for `metric`."""
    return f"adapter_{metric}"


def _v(version: str | None) -> str:
    return f"v{version}" if version else "none"


# What decides whether a retrain could change anything: the data version, the resolved config and
# the base model's weights. Equal on the champion's version -> nothing new to learn.
LINEAGE_KEYS = ("data_md5", "config_sha256", "base_model_sha256")


def changed_inputs(current: dict[str, str], champion_tags: dict[str, str]) -> list[str]:
    """Lineage keys whose value differs from the champion's (a missing tag counts as changed)."""
    return [k for k in LINEAGE_KEYS if not current.get(k) or current.get(k) != champion_tags.get(k)]
