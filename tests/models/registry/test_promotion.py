import pytest

from models.registry.promotion import (
    ALREADY,
    FORCED,
    PROMOTED,
    RETRAIN_INPUTS,
    Gate,
    Guard,
    changed_inputs,
    decide,
    decide_promotion,
)


def test_no_champion_promotes():
    d = decide(Gate("exact_match"), {"exact_match": 0.5}, None)
    assert d.promote and d.reason == "no champion yet"


@pytest.mark.parametrize(
    ("metric", "challenger", "champion", "min_gain", "promote"),
    [
        ("exact_match", 0.6, 0.5, 0.0, True),
        ("exact_match", 0.5, 0.5, 0.0, False),  # a tie keeps the champion
        ("exact_match", 0.4, 0.5, 0.0, False),
        ("exact_match", 0.55, 0.5, 0.1, False),  # better, but not by enough
        ("eval_loss", 1.0, 1.2, 0.0, True),  # lower loss is better
        ("eval_loss", 1.3, 1.2, 0.0, False),
        ("perplexity", 3.0, 3.5, 0.0, True),
    ],
)
def test_gate_respects_direction_and_margin(metric, challenger, champion, min_gain, promote):
    d = decide(Gate(metric, min_gain), {metric: challenger}, {metric: champion})
    assert d.promote is promote
    assert (d.challenger, d.champion) == (challenger, champion)
    assert (": better (" in d.reason) is promote


def promotion(**overrides):
    """decide_promotion for v3 at 0.7 exact_match, against a champion v1 at 0.5 seen by the
    caller and still champion under the lock, unless overridden (figures of the gate metric
    only: None = no figure)."""
    args = dict(
        version="3", metric="exact_match", challenger=0.7, seen_version="1", seen_value=0.5,
        current_version="1", current_value=0.5, min_improvement=0.0, force=False,
    )  # fmt: skip
    args.update(overrides)
    metric = args.pop("metric")

    def figures(value):
        return None if value is None else {metric: value}

    return decide_promotion(
        version=args["version"],
        gate=Gate(metric, args["min_improvement"]),
        challenger=figures(args["challenger"]),
        seen_version=args["seen_version"],
        seen=figures(args["seen_value"]),
        current_version=args["current_version"],
        current=figures(args["current_value"]),
        force=args["force"],
    )


def test_a_better_challenger_is_promoted_and_recorded():
    d = promotion()
    assert (d.promote, d.moves_champion, d.outcome) == (True, True, PROMOTED)
    assert d.tags() == {
        "promotion.outcome": "promoted",
        "promotion.metric": "exact_match",
        "promotion.challenger": "0.7",
        "promotion.champion": "0.5",
        "promotion.champion_version": "1",
        "promotion.reason": "exact_match 0.7000 vs champion 0.5000: better "
        "(gain +0.2000, needed > 0)",
    }


def test_the_first_version_is_promoted_against_no_champion():
    d = promotion(seen_version=None, seen_value=None, current_version=None, current_value=None)
    assert d.promote and d.outcome == PROMOTED and d.reason == "no champion yet"
    assert d.tags()["promotion.champion"] == "none"
    assert d.tags()["promotion.champion_version"] == "none"
    assert "promotion.note" not in d.tags()


@pytest.mark.parametrize(
    ("metric", "challenger", "champion", "min_gain", "promote"),
    [
        ("exact_match", 0.5, 0.5, 0.0, False),  # tie
        ("exact_match", 0.75, 0.5, 0.25, False),  # gain exactly min_improvement: not more
        ("exact_match", 0.76, 0.5, 0.25, True),
        ("eval_loss", 1.2, 1.2, 0.0, False),  # tie
        ("eval_loss", 1.1, 1.2, 0.05, True),  # lower is better, by more than the margin
        ("eval_loss", 1.18, 1.2, 0.05, False),
        ("perplexity", 3.6, 3.5, 0.0, False),
    ],
)
def test_the_gate_decides_with_ties_margins_and_directions(
    metric, challenger, champion, min_gain, promote
):
    d = promotion(
        metric=metric, challenger=challenger, seen_value=champion, current_value=champion,
        min_improvement=min_gain,
    )  # fmt: skip
    assert d.promote is promote and d.moves_champion is promote
    assert d.outcome == (PROMOTED if promote else "kept champion v1")
    assert d.tags()["promotion.outcome"] == d.outcome
    assert d.tags()["promotion.champion"] == f"{champion:.6g}"


def test_the_callers_figure_for_the_champion_is_used_when_it_has_not_moved():
    # The pipeline evaluates the champion on its own eval split: that figure, not the recorded one.
    d = promotion(seen_value=0.8, current_value=0.5)
    assert not d.promote and d.champion == 0.8 and d.outcome == "kept champion v1"


def test_a_champion_that_moved_is_decided_against_its_recorded_figure():
    beaten = promotion(current_version="2", current_value=0.9)
    assert (beaten.promote, beaten.outcome) == (False, "kept champion v2")
    assert (beaten.champion, beaten.champion_version) == (0.9, "2")
    note = "champion moved from v1 to v2 while deciding; decided against v2"
    assert beaten.note == note and beaten.tags()["promotion.note"] == note

    beats = promotion(current_version="2", current_value=0.6)
    assert beats.promote and beats.champion == 0.6 and beats.note == note

    gone = promotion(current_version=None, current_value=None)  # alias removed meanwhile
    assert gone.promote and gone.reason == "no champion yet"
    assert gone.note == "champion moved from v1 to none while deciding; decided against none"

    first = promotion(seen_version=None, seen_value=None, current_version="2", current_value=0.9)
    assert not first.promote and first.note.startswith("champion moved from none to v2")


def test_a_champion_without_a_recorded_figure_is_not_overwritten():
    d = promotion(seen_value=None, current_value=None)
    assert (d.promote, d.moves_champion, d.outcome) == (False, False, "kept champion v1")
    assert d.reason == "champion v1 recorded no adapter_exact_match; not overwritten"
    assert d.tags()["promotion.champion"] == "none"
    moved = promotion(current_version="2", current_value=None)
    assert not moved.promote and moved.reason.startswith("champion v2 recorded no adapter_")


def test_forced_promotion_moves_the_champion_whatever_the_figures():
    d = promotion(challenger=0.1, force=True)
    assert (d.promote, d.moves_champion, d.outcome) == (True, True, FORCED)
    assert d.reason.startswith("forced by operator (exact_match 0.1000 vs champion 0.5000: not")
    assert d.tags()["promotion.outcome"] == "promoted (forced)"
    # A rollback works even where the figures could not decide (no recorded figure, moved).
    assert promotion(seen_value=None, current_version="2", current_value=None, force=True).promote
    assert promotion(current_version="3", force=True).outcome == FORCED


def test_a_version_that_already_is_champion_stays_so_and_records_nothing():
    """One answer for both callers: a retried pipeline promotion whose earlier attempt moved
    the alias (the caller saw v1) counts as promoted, so its export runs; an operator asking
    again (the caller saw v3) is told so. Neither moves the alias or rewrites the record."""
    for seen_version, seen_value in (("1", 0.5), ("3", 0.7)):
        d = promotion(
            seen_version=seen_version, seen_value=seen_value, current_version="3",
            current_value=0.7,
        )  # fmt: skip
        assert (d.promote, d.moves_champion, d.outcome) == (True, False, ALREADY)
        assert d.reason == "v3 is already the champion"
        assert d.tags() == {}
    # ... even when the figures would not promote it again.
    assert promotion(challenger=0.1, current_version="3", current_value=0.1).promote


def test_a_champion_that_does_not_read_back_is_noted():
    d = promotion()
    assert d.read_back("3", "3") is d
    moved = d.read_back("3", "2")
    assert moved.note == "alias champion read back as v2 right after setting it"
    assert moved.tags()["promotion.note"] == moved.note
    raced = promotion(current_version="2", current_value=0.6).read_back("3", None)
    assert raced.note.endswith("; alias champion read back as none right after setting it")
    kept = promotion(challenger=0.1)
    assert kept.read_back("3", "1") is kept  # nothing was set, nothing to read back


def test_lineage_changes_name_each_differing_or_missing_key():
    champion = {"data_md5": "a", "config_sha256": "b", "base_model_sha256": "c"}
    assert changed_inputs(dict(champion), champion) == []
    assert changed_inputs({**champion, "data_md5": "x"}, champion) == ["data_md5"]
    assert changed_inputs({"config_sha256": "b"}, champion) == ["data_md5", "base_model_sha256"]
    assert changed_inputs(dict(champion), {}) == list(RETRAIN_INPUTS)


# The gate with guards and a tie-breaker, on the figures of the runs: exact match tied
# at 0.300, the second run's eval loss better.
CHAMPION = {"exact_match": 0.3, "eval_loss": 0.25, "eval_loss/math": 0.20, "eval_loss/words": 0.30}
GUARDED = Gate(
    "exact_match",
    guards=(Guard("eval_loss", 0.02, per_slice=True),),
    tie_breaker="eval_loss",
)


def test_every_gate_outcome_says_which_figures_decided():
    def verdict(gate=GUARDED, **challenger):
        return decide(gate, {**CHAMPION, **challenger}, CHAMPION)

    promoted = verdict(exact_match=0.35, eval_loss=0.26)  # better; loss within its guard
    assert promoted.promote and promoted.reason == (
        "exact_match 0.3500 vs champion 0.3000: better (gain +0.0500, needed > 0); "
        "3 guard figure(s) hold"
    )
    assert dict(promoted.checks)["guard.eval_loss"] == (
        "eval_loss 0.2600 vs 0.2500: regression +0.0100 <= 0.02 (holds)"
    )

    worse = verdict(exact_match=0.25)
    assert not worse.promote
    assert worse.reason.startswith("exact_match 0.2500 vs champion 0.3000: not better (gain -0")

    broken = verdict(exact_match=0.4, **{"eval_loss/math": 0.2250})  # a slice regressed
    assert not broken.promote
    assert broken.reason.endswith(
        "; guard broken: eval_loss/math 0.2250 vs 0.2000: regression +0.0250 > 0.02 (broken)"
    )
    assert set(dict(broken.checks)) == {
        "guard.eval_loss", "guard.eval_loss/math", "guard.eval_loss/words"
    }  # fmt: skip

    tie_broken = verdict(eval_loss=0.21)
    assert tie_broken.promote and tie_broken.reason == (
        "exact_match 0.3000 vs champion 0.3000: tie (gain +0.0000, needed > 0); tie broken by "
        "eval_loss 0.2100 vs champion 0.2500 (gain +0.0400); 3 guard figure(s) hold"
    )
    assert dict(tie_broken.checks)["tie_breaker"] == (
        "eval_loss 0.2100 vs champion 0.2500 (gain +0.0400)"
    )

    tie_kept = verdict(eval_loss=0.25)
    assert not tie_kept.promote
    assert "; tie not broken by eval_loss 0.2500 vs champion 0.2500 (gain +0.0000)" in (
        tie_kept.reason
    )
    no_breaker = verdict(gate=Gate("exact_match"), eval_loss=0.21)  # today's gate
    assert not no_breaker.promote and no_breaker.reason == (
        "exact_match 0.3000 vs champion 0.3000: tie (gain +0.0000, needed > 0); "
        "no registry.tie_breaker to break the tie"
    )
    # The tie is broken, but the tie-breaker's own guard would not let a worse slice through.
    tie_but_broken = verdict(eval_loss=0.21, **{"eval_loss/words": 0.33})
    assert not tie_but_broken.promote and "guard broken: eval_loss/words" in tie_but_broken.reason


def test_a_gate_decision_records_every_figure_it_used_on_the_version():
    d = decide_promotion(
        version="2", gate=GUARDED, challenger={**CHAMPION, "eval_loss": 0.21}, seen_version="1",
        seen=CHAMPION, current_version="1", current=CHAMPION,
    )  # fmt: skip
    tags = d.tags()
    assert tags["promotion.outcome"] == "promoted"
    assert tags["promotion.tie_breaker"] == "eval_loss 0.2100 vs champion 0.2500 (gain +0.0400)"
    assert tags["promotion.guard.eval_loss/words"] == (
        "eval_loss/words 0.3000 vs 0.3000: regression +0.0000 <= 0.02 (holds)"
    )
    assert tags["promotion.reason"] == d.reason


def test_a_guard_figure_the_champion_lacks_is_named_not_compared():
    """A champion registered before the slice existed (or the guard was configured)."""
    d = decide(GUARDED, {**CHAMPION, "exact_match": 0.4, "eval_loss/new": 9.0}, CHAMPION)
    assert d.promote
    assert dict(d.checks)["guard.eval_loss/new"] == (
        "eval_loss/new: not compared (no figure for both)"
    )


def test_custom_metric_directions_decide_the_gain():
    lower = Gate("edit_distance", directions={"edit_distance": "min"})
    assert decide(lower, {"edit_distance": 2.0}, {"edit_distance": 3.0}).promote
    assert not decide(lower, {"edit_distance": 4.0}, {"edit_distance": 3.0}).promote


# The forgetting guard: an lm-eval figure (models.evaluation.harness) guarded against the
# champion, or against the base model on the same run.
FACTS = {"exact_match": 0.9, "general_facts_acc": 0.60}
FORGETS = {"exact_match": 0.95, "general_facts_acc": 0.45}  # better on its task, lost facts
DIRECTIONS = {"exact_match": "max", "general_facts_acc": "max"}


def forgetting_gate(against: str, max_regression: float = 0.05) -> Gate:
    guard = Guard("general_facts_acc", max_regression, against=against)
    return Gate("exact_match", guards=(guard,), directions=DIRECTIONS)


def test_an_adapter_that_loses_on_an_lm_eval_task_is_not_promoted_over_the_champion():
    d = decide_promotion(
        version="2", gate=forgetting_gate("champion"), challenger=FORGETS, seen_version="1",
        seen=FACTS, current_version="1", current=FACTS,
    )  # fmt: skip
    assert (d.promote, d.moves_champion, d.outcome) == (False, False, "kept champion v1")
    assert d.reason == (
        "exact_match 0.9500 vs champion 0.9000: better (gain +0.0500, needed > 0); guard broken: "
        "general_facts_acc 0.4500 vs 0.6000: regression +0.1500 > 0.05 (broken)"
    )
    within = {**FORGETS, "general_facts_acc": 0.56}
    kept = decide(forgetting_gate("champion"), within, FACTS)
    assert kept.promote and kept.reason.endswith("; 1 guard figure(s) hold")


def test_a_guard_against_the_base_holds_back_even_a_first_version():
    base = {"exact_match": 0.0, "general_facts_acc": 0.60}
    d = decide_promotion(
        version="1", gate=forgetting_gate("base"), challenger=FORGETS, seen_version=None,
        seen=None, current_version=None, current=None, base=base,
    )  # fmt: skip
    assert (d.promote, d.moves_champion, d.outcome) == (False, False, "not promoted")
    assert d.reason == (
        "no champion yet; guard broken: general_facts_acc 0.4500 vs base 0.6000: regression "
        "+0.1500 > 0.05 (broken)"
    )
    assert d.tags()["promotion.guard.general_facts_acc"].endswith("(broken)")
    assert d.tags()["promotion.champion_version"] == "none"
    # Within the allowed loss it is promoted, the figure compared recorded; with no base
    # figures (nothing to compare) it is named, not compared.
    kept = {**FORGETS, "general_facts_acc": 0.58}
    first = decide(forgetting_gate("base"), kept, None, base)
    assert first.promote and first.reason == "no champion yet; 1 guard figure(s) hold"
    assert dict(first.checks)["guard.general_facts_acc"] == (
        "general_facts_acc 0.5800 vs base 0.6000: regression +0.0200 <= 0.05 (holds)"
    )
    blind = decide(forgetting_gate("base"), FORGETS, None, None)
    assert blind.promote and "not compared" in dict(blind.checks)["guard.general_facts_acc"]
    # Against the base with a champion: the champion's figure does not matter, the base's does.
    over = decide(forgetting_gate("base"), FORGETS, {**FACTS, "general_facts_acc": 0.1}, base)
    assert not over.promote and "vs base 0.6000" in over.reason
