"""Text metrics over (predictions, references), the custom ones a team keeps, and slices.

Built in, each a mean over examples on a 0-1 scale (higher is better):
  exact_match  prediction == reference, both stripped;
  token_f1     token-level F1: the harmonic mean of precision and recall of the tokens two
               strings share (counted with repeats), i.e. ROUGE-1 F from rouge-score;
  rouge_l      ROUGE-L F from rouge-score (longest common subsequence of tokens);
  chrf         chrF (character n-gram F-score, beta 2) from sacrebleu, over the whole set
               (sacrebleu's corpus score, divided by 100).
rouge-score's own tokenizer keeps only ASCII letters and digits; here a token is a run of Unicode
word characters, lowercased, so text in any script is scored.

A custom metric is `module:function`: a function of (predictions, references), two equal-length
lists of stripped strings, returning one number, higher is better unless the function has
`higher_is_better = False`. The module is imported from the working directory (the team's repo)
when it is not installed.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from models.errors import LoraflowError

BUILTIN = ("exact_match", "token_f1", "rouge_l", "chrf")
# Computed for every candidate whatever evaluation.metrics says: the loss on completions.
LOSS_METRICS = {"eval_loss": "min", "perplexity": "min"}
# Metric-name characters MLflow accepts (letters, digits, _ - . space / :); a slice value names
# metrics, so it keeps to these.
_SLICE_VALUE = re.compile(r"^[\w.\- ]{1,100}$")


class MetricError(LoraflowError):
    """A metric or slice setting that cannot be used; the message names the field and value."""


@dataclass(frozen=True)
class Metric:
    """One configured metric: its recorded name, its direction and how to compute it."""

    name: str
    higher_is_better: bool
    compute: Callable[[list[str], list[str]], float]


class _Words:
    """rouge-score tokenizer: lowercase Unicode word runs (its default drops non-ASCII text)."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())


def exact_match(predictions: list[str], references: list[str]) -> float:
    pairs = zip(predictions, references, strict=True)
    return sum(p.strip() == r.strip() for p, r in pairs) / max(len(predictions), 1)


def _rouge(kind: str) -> Callable[[list[str], list[str]], float]:
    def score(predictions: list[str], references: list[str]) -> float:
        from rouge_score.rouge_scorer import RougeScorer

        scorer = RougeScorer([kind], tokenizer=_Words())
        pairs = zip(predictions, references, strict=True)
        # RougeScorer.score takes (target, prediction).
        total = sum(scorer.score(r, p)[kind].fmeasure for p, r in pairs)
        return total / max(len(predictions), 1)

    return score


def chrf(predictions: list[str], references: list[str]) -> float:
    from sacrebleu.metrics import CHRF

    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    return CHRF().corpus_score(predictions, [references]).score / 100.0


_BUILTINS = {
    "exact_match": exact_match,
    "token_f1": _rouge("rouge1"),
    "rouge_l": _rouge("rougeL"),
    "chrf": chrf,
}


def metric_name(spec: str) -> str:
    """The name a metric is recorded under: a built-in's own, a custom one's function name."""
    return spec.rsplit(":", 1)[-1] if ":" in spec else spec


def direction(name: str, specs: list[str] | tuple[str, ...] = BUILTIN) -> str | None:
    """ "max" or "min" for a metric named `name` among the loss metrics and `specs`; None when
    no such metric is computed."""
    if name in LOSS_METRICS:
        return LOSS_METRICS[name]
    for spec in specs:
        if metric_name(spec) == name:
            return "max" if resolve(spec).higher_is_better else "min"
    return None


def check_specs(specs: list[str]) -> list[str]:
    """The evaluation.metrics entries, checked by their spelling (nothing imported): built-in
    names or `module:function`, no name twice. Raises ValueError naming the entry."""
    names = set()
    for spec in specs:
        if ":" in spec:
            module, _, function = spec.partition(":")
            if not (module and function.isidentifier()):
                raise ValueError(f"{spec!r} is not module:function")
        elif spec not in BUILTIN:
            raise ValueError(
                f"unknown metric {spec!r}; built in: {', '.join(BUILTIN)}, or module:function"
            )
        name = metric_name(spec)
        if name in names or name in LOSS_METRICS or name == "examples":
            raise ValueError(f"metric name {name!r} is used twice")
        names.add(name)
    return specs


def resolve(spec: str) -> Metric:
    """The metric a spec names; a custom one is imported (from the working directory if it is
    not installed) and must be a function of two arguments."""
    if ":" not in spec:
        return Metric(spec, True, _BUILTINS[spec])
    module_name, _, function_name = spec.partition(":")
    where = f"evaluation.metrics {spec!r}"
    try:
        module = _import(module_name)
    except ImportError as e:
        raise MetricError(f"{where}: cannot import {module_name!r} ({e})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise MetricError(f"{where}: {module_name} has no function {function_name!r}")
    try:
        inspect.signature(function).bind([], [])
    except (TypeError, ValueError):
        raise MetricError(
            f"{where}: must take (predictions, references), two lists of strings"
        ) from None
    higher = bool(getattr(function, "higher_is_better", True))
    return Metric(function_name, higher, function)


def _import(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is None or not module_name.startswith(e.name):
            raise  # the module itself imports something missing
    sys.path.insert(0, str(Path.cwd()))
    try:
        return importlib.import_module(module_name)
    finally:
        sys.path.remove(str(Path.cwd()))


def score(metric: Metric, predictions: list[str], references: list[str]) -> float:
    """metric over the pairs, as a float; a custom metric that fails or returns no finite
    number is a MetricError naming it."""
    try:
        value = float(metric.compute(predictions, references))
    except Exception as e:
        raise MetricError(f"metric {metric.name}: failed on the eval split ({e!r})") from None
    if not math.isfinite(value):
        raise MetricError(f"metric {metric.name}: returned {value} (a finite number is needed)")
    return value


def check_custom(specs: list[str], references: list[str]) -> None:
    """Before training: every custom metric imports and scores the eval references against
    themselves to a finite number (the case every metric must handle)."""
    for spec in specs:
        if ":" in spec:
            score(resolve(spec), references, references)


def slice_key(slice_field: str, obj: object, at: str) -> str:
    """The slice an eval record belongs to: its `slice_field` value, as a metric-name part."""
    if not isinstance(obj, dict) or slice_field not in obj:
        raise MetricError(f"{at}: missing field {slice_field!r} (evaluation.slice_field)")
    value = obj[slice_field]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MetricError(
            f"{at}: evaluation.slice_field {slice_field!r} is {value!r}; a slice is a string "
            "or an integer"
        )
    key = str(value)
    if not _SLICE_VALUE.match(key):
        raise MetricError(
            f"{at}: slice {key!r} ({slice_field}) names metrics: use letters, digits, "
            "'_', '-', '.', spaces (at most 100)"
        )
    return key


def sliced(name: str, slice_value: str) -> str:
    """The report key of metric `name` on one slice, e.g. exact_match/arithmetic."""
    return f"{name}/{slice_value}"
