from datetime import UTC, datetime

import pytest

from models.registry.approval import (
    AWAITING,
    NOBODY,
    Answer,
    ApprovalError,
    approval_tags,
    expiry_note,
    held_for_approval,
    needs_signoff,
    not_approved,
    review_markdown,
    status_of,
    waiting_run,
)
from models.registry.promotion import Gate, Guard, decide_promotion

GATE = Gate("eval_loss", guards=(Guard("exact_match", 0.05),))
BETTER = {"eval_loss": 1.0, "exact_match": 0.5}
CHAMPION = {"eval_loss": 1.2, "exact_match": 0.5}


def decision(challenger=BETTER, force=False, champion="2"):
    seen = CHAMPION if champion else None
    return decide_promotion(version="3", gate=GATE, challenger=challenger, force=force,
                            seen_version=champion, seen=seen, current_version=champion,
                            current=seen)  # fmt: skip


def test_only_a_version_the_gate_passes_waits_for_signoff():
    passed = decision()
    assert passed.moves_champion
    assert needs_signoff("required", passed)
    assert not needs_signoff("none", passed)  # today's behaviour
    assert not needs_signoff("required", decision({"eval_loss": 1.3, "exact_match": 0.5}))
    assert not needs_signoff("required", decision(force=True))  # an operator's decision
    held = held_for_approval(passed)
    assert not held.promote and not held.moves_champion and held.outcome == AWAITING
    assert held.tags()["promotion.outcome"] == AWAITING
    assert not needs_signoff("required", held)


def test_a_first_version_waits_too_unless_a_base_guard_holds_it_back():
    assert needs_signoff("required", decision(champion=None))
    held_back = decide_promotion(
        version="1", gate=Gate("eval_loss", guards=(Guard("exact_match", 0.0, against="base"),)),
        challenger=BETTER, seen_version=None, seen=None, current_version=None, current=None,
        base={"exact_match": 0.9},
    )  # fmt: skip
    assert not needs_signoff("required", held_back)


def test_statuses_and_tags():
    at = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
    assert status_of(Answer("approve", "alice")) == "approved"
    assert status_of(Answer("reject", "bob", "too terse")) == "rejected"
    assert status_of(None) == "expired"
    with pytest.raises(ApprovalError, match="decision must be approve or reject"):
        status_of(Answer("maybe", "alice"))
    assert approval_tags("pending", "run-1", at=at) == {
        "approval.status": "pending", "approval.by": "", "approval.at": "2026-12-07T08:00:00Z",
        "approval.comment": "", "approval.flow_run": "run-1",
    }  # fmt: skip
    rejected = approval_tags("rejected", "run-1", Answer("reject", "bob", "too terse"), at)
    assert rejected["approval.by"] == "bob" and rejected["approval.comment"] == "too terse"
    expired = approval_tags("expired", "run-1", at=at, note=expiry_note(600))
    assert expired["approval.by"] == NOBODY
    assert expired["approval.comment"] == "no answer within registry.approval_timeout (600 s)"
    kept = not_approved(held_for_approval(decision()), rejected)
    assert not kept.promote and kept.outcome == "not promoted (rejected)"
    assert kept.reason.startswith("rejected by bob (too terse); the gate had passed: eval_loss")


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        ({}, "m v3 was never offered for sign-off (promotion.outcome: no promotion recorded)"),
        ({"promotion.outcome": "kept champion v2"}, "(promotion.outcome: kept champion v2)"),
        ({"approval.status": "approved", "approval.by": "alice", "approval.at": "T"},
         "m v3 is not pending: approval.status is approved (by alice at T); nothing changed"),
        ({"approval.status": "expired"}, "approval.status is expired"),
        ({"approval.status": "pending"}, "records no approval.flow_run"),
    ],
)  # fmt: skip
def test_only_a_pending_version_can_be_answered(tags, message):
    with pytest.raises(ApprovalError) as refused:
        waiting_run("m", "3", tags, "approve")
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_a_pending_version_names_its_waiting_run():
    tags = {"approval.status": "pending", "approval.flow_run": "abc"}
    assert waiting_run("m", "3", tags, "reject") == "abc"
    with pytest.raises(ApprovalError, match="decision must be approve or reject"):
        waiting_run("m", "3", tags, "promote")


def test_review_shows_figures_guards_examples_and_links():
    report = {
        "base": {"eval_loss": 2.5, "exact_match": 0.1, "examples": 16.0},
        "adapter": {"eval_loss": 1.0, "exact_match": 0.5, "exact_match/easy": 0.7},
        "champion": {"eval_loss": 1.2, "exact_match": 0.5},
    }
    examples = [
        {"prompt": "2+2 | ?", "expected": "4", "base": "5", "adapter": "4", "champion": "4"}
    ]
    text = review_markdown(model_name="m", version="3", decision=decision(), report=report,
                           examples=examples, run_link="http://mlflow/#/run", version_link="V",
                           timeout_s=600)  # fmt: skip
    assert "| metric | base | challenger v3 | champion v2 |" in text
    assert "| eval_loss | 2.5000 | 1.0000 | 1.2000 |" in text
    assert "exact_match/easy" not in text and "| examples |" not in text
    assert "- guard.exact_match: exact_match 0.5000 vs 0.5000" in text
    assert "| 2+2 \\| ? | 4 | 5 | 4 | 4 |" in text  # a | in an answer does not break the table
    assert "http://mlflow/#/run" in text and "600 s" in text
    assert "records no identity of its own" in text
