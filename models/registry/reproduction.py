"""Judging a rebuilt adapter against the recorded one: identical, equivalent or different.

- identical: the rebuilt `adapter_model.safetensors` has the recorded sha256.
- equivalent: the bytes differ, but every recorded adapter metric, measured again on the rebuilt
  adapter with the same eval split, is within METRIC_TOLERANCES. Float results depend on the
  hardware and numeric environment (training.hardware), so the differences between the recorded
  environment and this one are named as the likely cause.
- different: an input differs (base weights), or a metric is outside its tolerance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

IDENTICAL, EQUIVALENT, DIFFERENT = "identical", "equivalent", "different"

# Per metric: (kind, bound). Float differences from another CPU or thread count move the demo's
# eval loss by far less than 1%, and exact match by a few examples at most; an input or code
# change moves them by more. exact_match 0.025 = 5 of the demo's 200 eval examples.
METRIC_TOLERANCES: dict[str, tuple[str, float]] = {
    "eval_loss": ("relative", 0.01),
    "perplexity": ("relative", 0.01),
    "exact_match": ("absolute", 0.025),
}


@dataclass(frozen=True)
class MetricCheck:
    """One recorded metric against its value measured on the rebuilt adapter."""

    name: str
    recorded: float
    rebuilt: float
    kind: str
    bound: float

    @property
    def difference(self) -> float:
        diff = abs(self.rebuilt - self.recorded)
        if self.kind == "relative":
            return diff / abs(self.recorded) if self.recorded else (0.0 if not diff else math.inf)
        return diff

    @property
    def within(self) -> bool:
        return self.difference <= self.bound + 1e-12  # 0.825 - 0.8 is 0.025000000000000022

    def describe(self) -> str:
        """e.g. 'eval_loss: recorded 0.2520, rebuilt 0.2523 (0.12% <= 1%)'."""
        if self.kind == "relative":
            diff, bound = f"{self.difference:.2%}", f"{self.bound:.0%}"
        else:
            diff, bound = f"{self.difference:.4f}", f"{self.bound:g}"
        relation = "<=" if self.within else ">"
        return (
            f"{self.name}: recorded {self.recorded:.4f}, rebuilt {self.rebuilt:.4f} "
            f"({diff} {relation} {bound})"
        )


def check_metrics(
    recorded: dict[str, float],
    rebuilt: dict[str, float],
    tolerances: dict[str, tuple[str, float]] = METRIC_TOLERANCES,
) -> list[MetricCheck]:
    """Every toleranced metric present in both dicts, recorded vs rebuilt."""
    return [
        MetricCheck(name, float(recorded[name]), float(rebuilt[name]), kind, bound)
        for name, (kind, bound) in tolerances.items()
        if name in recorded and name in rebuilt
    ]


def max_abs_difference(recorded: str | Path, rebuilt: str | Path) -> float:
    """Largest |a - b| over all tensors of two safetensors files; inf when their tensor names or
    shapes differ (then they are not the same adapter at all)."""
    from safetensors.torch import load_file

    a, b = load_file(str(recorded)), load_file(str(rebuilt))
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return math.inf
    diffs = [(a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel()]
    return max(diffs, default=0.0)


def changed_tags(recorded: dict[str, str], here: dict[str, str], prefix: str) -> list[str]:
    """'<key>: recorded X, here Y' for every `prefix`* tag whose value differs here."""
    keys = sorted({k for k in (*recorded, *here) if k.startswith(prefix)})
    return [
        f"{key.removeprefix(prefix)}: recorded {recorded.get(key, 'not recorded')}, "
        f"here {here.get(key, 'not set')}"
        for key in keys
        if recorded.get(key) != here.get(key)
    ]


def verdict(bytes_identical: bool, checks: list[MetricCheck]) -> str:
    """identical when the bytes are; equivalent when every checked metric is within tolerance
    (at least one checked); else different."""
    if bytes_identical:
        return IDENTICAL
    if checks and all(c.within for c in checks):
        return EQUIVALENT
    return DIFFERENT
