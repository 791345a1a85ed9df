"""Promotion decisions: does a version become champion, and what is recorded about it.

Plain functions of the figures: the registry I/O around them (reading the champion under the
promotion lock, moving the alias, writing the tags) is in tasks/promotion.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from models.evaluation.metrics import BUILTIN, LOSS_METRICS

# Metric name -> "max" when higher is better, "min" when lower is better: the metrics every run
# computes or can compute without a team's code (a custom metric has its own direction).
METRIC_DIRECTIONS = {**{m: "max" for m in BUILTIN}, **LOSS_METRICS}

# Outcomes as recorded in the version's `promotion.outcome` tag; a kept champion is recorded as
# f"kept champion v{n}".
PROMOTED, FORCED, ALREADY = "promoted", "promoted (forced)", "already the champion"
# A first version (no champion yet) that a guard against the base held back.
HELD_BACK = "not promoted"
# Gains within this of zero are a tie on the primary metric (float noise, not a difference).
TIE = 1e-12

Figures = dict[str, float]  # metric (or metric/slice) -> value, for one model on the eval split


@dataclass(frozen=True)
class Guard:
    """A metric that may not get worse than the champion's by more than max_regression (in the
    metric's own units); per_slice: on every slice of evaluation.slice_field as well.
    against "base": than the base model's figure on the same run instead (a forgetting guard:
    it holds back a first version too, when there is no champion yet)."""

    metric: str
    max_regression: float
    per_slice: bool = False
    against: str = "champion"


@dataclass(frozen=True)
class Gate:
    """What promotion asks of a challenger: `metric` better by more than min_improvement, a tie
    on it broken by `tie_breaker` (strictly better), and every guard holding.

    directions: "max"/"min" for every metric named here (slice keys use their metric's).
    """

    metric: str
    min_improvement: float = 0.0
    guards: tuple[Guard, ...] = ()
    tie_breaker: str | None = None
    directions: dict[str, str] = field(default_factory=lambda: dict(METRIC_DIRECTIONS))

    def gain(self, key: str, challenger: float, champion: float) -> float:
        """How much better the challenger is on `key` (negative: worse)."""
        higher = self.directions[key.split("/", 1)[0]] == "max"
        return challenger - champion if higher else champion - challenger


@dataclass(frozen=True)
class Decision:
    """The verdict on one version, with the figures it was made on.

    promote: the version is champion once this decision is carried out (the pipeline exports
    it); `moves_champion` says whether the alias has to move for that.
    checks: (what, finding) for the tie-breaker and each guard, recorded as promotion.<what>.
    """

    promote: bool
    metric: str
    challenger: float
    champion: float | None
    reason: str
    outcome: str = ""
    champion_version: str | None = None
    note: str = ""
    checks: tuple[tuple[str, str], ...] = ()

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
        record.update({f"promotion.{what}": finding for what, finding in self.checks})
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


def _guard_findings(
    gate: Gate, challenger: Figures, champion: Figures | None, base: Figures | None = None
) -> list[tuple[str, str, bool]]:
    """(figure, finding, holds) for every figure each guard covers: the metric, and with per_slice
    each slice of it the challenger has. Without a champion only the guards against the base
    are checked."""
    findings = []
    for guard in gate.guards:
        against_base = guard.against == "base"
        if champion is None and not against_base:
            continue
        reference = (base or {}) if against_base else champion
        vs = "vs base " if against_base else "vs "
        keys = [guard.metric]
        if guard.per_slice:
            keys += sorted(k for k in challenger if k.startswith(f"{guard.metric}/"))
        for key in keys:
            if key not in challenger or key not in reference:
                findings.append((key, f"{key}: not compared (no figure for both)", True))
                continue
            # How much better the reference is: the challenger's regression.
            regression = gate.gain(key, reference[key], challenger[key])
            holds = regression <= guard.max_regression
            findings.append(
                (
                    key,
                    f"{key} {challenger[key]:.4f} {vs}{reference[key]:.4f}: regression "
                    f"{regression:+.4f} {'<=' if holds else '>'} {guard.max_regression:g} "
                    f"({'holds' if holds else 'broken'})",
                    holds,
                )
            )
    return findings


def decide(
    gate: Gate, challenger: Figures, champion: Figures | None, base: Figures | None = None
) -> Decision:
    """The gate: promote when there is no champion (and every guard against the base holds);
    else when gate.metric is better by more than gate.min_improvement (or tied and
    gate.tie_breaker is strictly better) and every guard holds. base: the base model's figures
    on the same run, for the guards against it. The reason says which figures decided;
    `checks` holds every figure compared."""
    metric, value = gate.metric, challenger[gate.metric]
    if champion is None:
        findings = _guard_findings(gate, challenger, None, base)
        checks = tuple((f"guard.{key}", text) for key, text, _ in findings)
        broken = [text for _, text, holds in findings if not holds]
        if broken:
            reason = f"no champion yet; guard broken: {'; '.join(broken)}"
            return Decision(False, metric, value, None, reason, HELD_BACK, None, "", checks)
        reason = "no champion yet" + (f"; {len(findings)} guard figure(s) hold" if findings else "")
        return Decision(True, metric, value, None, reason, PROMOTED, None, "", checks)
    theirs = champion[metric]
    gain = gate.gain(metric, value, theirs)
    better = gain > gate.min_improvement
    tie = abs(gain) <= TIE
    verdict = "better" if better else "tie" if tie else "not better"
    reason = (
        f"{metric} {value:.4f} vs champion {theirs:.4f}: {verdict} "
        f"(gain {gain:+.4f}, needed > {gate.min_improvement:g})"
    )
    checks = []
    if tie and not better:
        second = gate.tie_breaker
        if second is None:
            reason += "; no registry.tie_breaker to break the tie"
        elif second not in challenger or second not in champion:
            reason += f"; tie not broken: no {second} figure for both"
        else:
            second_gain = gate.gain(second, challenger[second], champion[second])
            better = second_gain > TIE
            finding = (
                f"{second} {challenger[second]:.4f} vs champion {champion[second]:.4f} "
                f"(gain {second_gain:+.4f})"
            )
            checks.append(("tie_breaker", finding))
            reason += f"; tie {'broken' if better else 'not broken'} by {finding}"
    findings = _guard_findings(gate, challenger, champion, base)
    checks += [(f"guard.{key}", text) for key, text, _ in findings]
    broken = [text for _, text, holds in findings if not holds]
    if broken:
        reason += f"; guard broken: {'; '.join(broken)}"
    elif findings:
        reason += f"; {len(findings)} guard figure(s) hold"
    promote = better and not broken
    return Decision(promote, metric, value, theirs, reason, PROMOTED if promote else "", None, "",
                    tuple(checks))  # fmt: skip


def decide_promotion(
    *,
    version: str,
    gate: Gate,
    challenger: Figures,
    seen_version: str | None,
    seen: Figures | None,
    current_version: str | None,
    current: Figures | None,
    force: bool = False,
    base: Figures | None = None,
) -> Decision:
    """Whether `version` becomes champion, with the reason and what to record.

    challenger: the version's figures. seen_version/seen: the champion the caller compared
    against (read before its evaluation; seen may be its figures on this run's eval split).
    base: the base model's figures on the same run (the guards against the base).
    current_version/current: the champion now, read under the promotion lock, and the figures
    its run recorded (adapter_<metric>; None if it recorded none). In order:
      - force: promoted regardless (an operator's rollback), the gate's verdict kept as reason;
      - `version` already is the champion (an earlier attempt of this same promotion moved the
        alias, or an operator asks again): it stays champion and nothing is recorded again;
      - the champion moved since the caller read it: decided against the new champion's
        recorded figures, with a note saying so;
      - a champion without a figure for gate.metric is not overwritten;
      - else the gate (`decide`).
    """
    metric, value = gate.metric, challenger[gate.metric]
    if force:
        usable = seen if seen and metric in seen else None
        verdict = decide(gate, challenger, usable, base)
        reason = f"forced by operator ({verdict.reason})"
        champion = usable[metric] if usable else None
        return Decision(True, metric, value, champion, reason, FORCED, seen_version)
    if current_version == version:
        reason = f"v{version} is already the champion"
        recorded = (current or {}).get(metric)
        return Decision(True, metric, value, recorded, reason, ALREADY, version)
    champion_version, champion, note = seen_version, seen, ""
    if current_version != seen_version:
        note = (
            f"champion moved from {_v(seen_version)} to {_v(current_version)} while deciding; "
            f"decided against {_v(current_version)}"
        )
        champion_version, champion = current_version, current
    kept = f"kept champion v{champion_version}"
    if champion_version is not None and (champion is None or metric not in champion):
        reason = f"champion v{champion_version} recorded no adapter_{metric}; not overwritten"
        return Decision(False, metric, value, None, reason, kept, champion_version, note)
    verdict = decide(gate, challenger, champion, base)
    outcome = PROMOTED if verdict.promote else kept if champion_version else HELD_BACK
    return replace(verdict, outcome=outcome, champion_version=champion_version, note=note)


def recorded_key(metric: str) -> str:
    """The name under which a version's run records the adapter's figure for `metric`."""
    return f"adapter_{metric}"


def _v(version: str | None) -> str:
    return f"v{version}" if version else "none"


# What decides whether a retrain could change anything: the data version, the resolved config and
# the base model's weights. Equal on the champion's version -> nothing new to learn.
RETRAIN_INPUTS = ("data_md5", "config_sha256", "base_model_sha256")


def changed_inputs(current: dict[str, str], champion_tags: dict[str, str]) -> list[str]:
    """Lineage keys whose value differs from the champion's (a missing tag counts as changed)."""
    return [
        k for k in RETRAIN_INPUTS if not current.get(k) or current.get(k) != champion_tags.get(k)
    ]
