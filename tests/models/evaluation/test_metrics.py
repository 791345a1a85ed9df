"""The text metrics against figures worked out by hand, custom metrics, slice names."""

import pytest

from models.evaluation.metrics import (
    MetricError,
    check_custom,
    check_specs,
    direction,
    resolve,
    score,
    slice_key,
)


def value(name, predictions, references):
    return score(resolve(name), predictions, references)


def test_exact_match_compares_stripped_strings():
    assert value("exact_match", ["a b", " x ", "y"], ["a b", "x", "z"]) == pytest.approx(2 / 3)


def test_token_f1_counts_shared_tokens_with_repeats():
    # "the cat sat" vs "the cat sat down": 3 shared, P 3/3, R 3/4 -> F 6/7.
    # "a a b" vs "a b b": a shared once, b once -> P 2/3, R 2/3 -> F 2/3. Mean 16/21.
    got = value("token_f1", ["the cat sat", "a a b"], ["the cat sat down", "a b b"])
    assert got == pytest.approx(16 / 21)
    # Lowercased words of any script: "Café au lait" vs "café" -> P 1/3, R 1 -> F 1/2.
    assert value("token_f1", ["Café au lait"], ["café"]) == pytest.approx(0.5)
    assert value("token_f1", ["x"], ["y"]) == 0.0


def test_rouge_l_is_the_f_score_of_the_longest_common_subsequence():
    # LCS("the cat sat on the mat", "the cat on the mat") = 5: P 5/6, R 5/5 -> F 10/11.
    # LCS("b a", "a b") = 1: P 1/2, R 1/2 -> F 1/2. Mean 31/44.
    got = value("rouge_l", ["the cat sat on the mat", "b a"], ["the cat on the mat", "a b"])
    assert got == pytest.approx(31 / 44)
    assert value("rouge_l", ["Добрый день"], ["добрый день"]) == pytest.approx(1.0)


def test_chrf_is_sacrebleus_corpus_score_on_a_0_1_scale():
    # "ab" vs "abc": 1-grams P 2/2 R 2/3, 2-grams P 1/1 R 1/2, no 3-grams in the answer. Averaged
    # over those orders P = 1, R = 7/12; F(beta=2) = 5PR / (4P + R) = 7/11.
    assert value("chrf", ["ab"], ["abc"]) == pytest.approx(7 / 11)
    assert value("chrf", ["ab", "ab"], ["abc", "abc"]) == pytest.approx(7 / 11)  # whole set
    assert value("chrf", ["hello"], ["hello"]) == pytest.approx(1.0)
    assert value("chrf", ["xyz"], ["abc"]) == 0.0


def test_metric_specs_are_checked_by_name():
    assert check_specs(["exact_match", "chrf", "team.metrics:recall"]) == [
        "exact_match", "chrf", "team.metrics:recall"
    ]  # fmt: skip
    for bad, message in [
        (["bleu"], "unknown metric 'bleu'; built in: exact_match, token_f1, rouge_l, chrf"),
        (["m:"], "'m:' is not module:function"),
        ([":f"], "':f' is not module:function"),
        (["chrf", "a:chrf"], "metric name 'chrf' is used twice"),
        (["a:eval_loss"], "metric name 'eval_loss' is used twice"),
    ]:
        with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
            check_specs(bad)


TEAM_METRICS = """
def keyword_recall(predictions, references):
    hits = [any(w in p.split() for w in r.split()) for p, r in zip(predictions, references)]
    return sum(hits) / len(hits)


def edits(predictions, references):
    return float(sum(p != r for p, r in zip(predictions, references)))


edits.higher_is_better = False


def broken(predictions, references):
    return float("nan")


def one_argument(predictions):
    return 1.0


NOT_A_FUNCTION = 3
"""


@pytest.fixture
def team_repo(tmp_path, monkeypatch):
    """A team's repository with its own metrics module, as the working directory."""
    (tmp_path / "team_metrics.py").write_text(TEAM_METRICS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(__import__("sys").modules, "team_metrics", raising=False)
    return tmp_path


def test_a_custom_metric_from_the_teams_repo(team_repo):
    recall = resolve("team_metrics:keyword_recall")
    assert (recall.name, recall.higher_is_better) == ("keyword_recall", True)
    assert score(recall, ["a b", "c"], ["b", "d"]) == 0.5
    specs = ["team_metrics:edits"]
    assert direction("edits", specs) == "min" and direction("eval_loss", specs) == "min"
    assert direction("chrf", specs) is None  # not computed by this evaluation
    check_custom(["exact_match", "team_metrics:keyword_recall"], ["x", "y"])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module:f", "evaluation.metrics 'no_such_module:f': cannot import"),
        ("team_metrics:missing", "team_metrics has no function 'missing'"),
        ("team_metrics:NOT_A_FUNCTION", "team_metrics has no function 'NOT_A_FUNCTION'"),
        ("team_metrics:one_argument", "must take (predictions, references), two lists"),
        ("team_metrics:broken", "metric broken: returned nan (a finite number is needed)"),
    ],
)
def test_a_custom_metric_that_cannot_be_used_is_refused_before_training(team_repo, spec, message):
    with pytest.raises(MetricError) as err:
        check_custom([spec], ["x", "y"])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_slice_values_name_metrics():
    assert slice_key("task", {"task": "arith"}, "eval.jsonl:1") == "arith"
    assert slice_key("level", {"level": 3}, "eval.jsonl:1") == "3"
    for obj, message in [
        ({}, "eval.jsonl:4: missing field 'task' (evaluation.slice_field)"),
        ({"task": None}, "eval.jsonl:4: evaluation.slice_field 'task' is None; a slice is a"),
        ({"task": "a+b"}, "eval.jsonl:4: slice 'a+b' (task) names metrics: use letters"),
    ]:
        with pytest.raises(MetricError) as err:
            slice_key("task", obj, "eval.jsonl:4")
        assert str(err.value).startswith(message)
