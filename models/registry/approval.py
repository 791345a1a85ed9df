"""Sign-off before promotion (registry.approval: required): what is recorded, what a reviewer
reads, and which answers are still possible.

MLflow has no approval state, so the state lives in tags on the version, as SageMaker's model
registry keeps it (PendingManualApproval, Approved, Rejected): `approval.status` (pending,
approved, rejected, expired), `approval.by`, `approval.at`, `approval.comment` and
`approval.flow_run` (the Prefect flow run that waits, or waited, for the answer). Plain functions:
the waiting (Prefect's pause) and the registry I/O are in tasks/approval.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime

from models.errors import LoraflowError
from models.registry.promotion import PROMOTED, Decision

PENDING, APPROVED, REJECTED, EXPIRED = "pending", "approved", "rejected", "expired"
STATUSES = (PENDING, APPROVED, REJECTED, EXPIRED)
APPROVE, REJECT = "approve", "reject"
# promotion.outcome of a version the gate passed while it waits for a person.
AWAITING = "awaiting approval"
# approval.by of a version nobody answered for: the flow run itself expired the request.
NOBODY = "nobody (timed out)"
# How many characters of a prompt or an answer the review shows (the MLflow run has them all).
SHOWN_CHARS = 160


class ApprovalError(LoraflowError):
    """An answer that cannot be given: the version is not waiting, or not there."""


@dataclass(frozen=True)
class Answer:
    """A reviewer's answer: approve or reject, who (as they typed it: Prefect OSS records no
    identity of its own) and why."""

    decision: str
    by: str
    comment: str = ""


def held_for_approval(decision: Decision) -> Decision:
    """The gate's decision on a version that must wait for a person: not promoted yet."""
    return replace(decision, promote=False, outcome=AWAITING)


def needs_signoff(approval: str, decision: Decision) -> bool:
    """Whether the version waits for a person: approval required and the automatic gate passed.
    A forced promotion is an operator's decision already; a version the gate failed is never
    offered."""
    return approval == "required" and decision.outcome == PROMOTED


def not_approved(decision: Decision, tags: dict[str, str]) -> Decision:
    """The held decision once a person rejected it, or nobody answered: the version stays
    challenger, and promotion.outcome / promotion.reason say why."""
    status, by, comment = tags["approval.status"], tags["approval.by"], tags["approval.comment"]
    said = f" ({comment})" if comment else ""
    reason = f"{status} by {by}{said}; the gate had passed: {decision.reason}"
    return replace(decision, promote=False, outcome=f"not promoted ({status})", reason=reason)


def status_of(answer: Answer | None) -> str:
    """approved, rejected, or (no answer within registry.approval_timeout) expired."""
    if answer is None:
        return EXPIRED
    if answer.decision not in (APPROVE, REJECT):
        raise ApprovalError(f"decision must be {APPROVE} or {REJECT} (got {answer.decision!r})")
    return APPROVED if answer.decision == APPROVE else REJECTED


def expiry_note(timeout_s: int) -> str:
    """approval.comment of a version nobody answered for."""
    return f"no answer within registry.approval_timeout ({timeout_s} s)"


def approval_tags(
    status: str,
    flow_run: str,
    answer: Answer | None = None,
    at: datetime | None = None,
    note: str = "",
) -> dict[str, str]:
    """The five approval.* tags, all of them in every state; `note` is the comment when there
    is no answer (expired)."""
    if status not in STATUSES:
        raise ApprovalError(
            f"approval.status must be one of {', '.join(STATUSES)} (got {status!r})"
        )
    when = (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    by = answer.by if answer else (NOBODY if status == EXPIRED else "")
    return {
        "approval.status": status,
        "approval.by": by,
        "approval.at": when,
        "approval.comment": answer.comment if answer else note,
        "approval.flow_run": flow_run,
    }


def waiting_run(model_name: str, version: str, tags: dict[str, str], decision: str) -> str:
    """The flow run waiting for sign-off of `version` (its approval.flow_run), or ApprovalError
    in one line when there is nothing to answer: never offered (approval none, or the gate
    failed), or already decided (approved twice, rejected, expired)."""
    if decision not in (APPROVE, REJECT):
        raise ApprovalError(f"decision must be {APPROVE} or {REJECT} (got {decision!r})")
    where = f"{model_name} v{version}"
    status = tags.get("approval.status")
    if status is None:
        outcome = tags.get("promotion.outcome", "no promotion recorded")
        raise ApprovalError(
            f"{where} was never offered for sign-off (promotion.outcome: {outcome}); "
            f"nothing to {decision}"
        )
    if status != PENDING:
        by = tags.get("approval.by") or "?"
        raise ApprovalError(
            f"{where} is not pending: approval.status is {status} (by {by} at "
            f"{tags.get('approval.at', '?')}); nothing changed"
        )
    flow_run = tags.get("approval.flow_run", "")
    if not flow_run:
        raise ApprovalError(f"{where} is pending but records no approval.flow_run; nothing changed")
    return flow_run


def _cell(text: object) -> str:
    one_line = " ".join(str(text).split()).replace("|", "\\|")
    return one_line if len(one_line) <= SHOWN_CHARS else one_line[: SHOWN_CHARS - 1] + "…"


def review_markdown(
    *,
    model_name: str,
    version: str,
    decision: Decision,
    report: dict[str, dict[str, float]],
    examples: list[dict[str, str]],
    run_link: str,
    version_link: str,
    timeout_s: int,
) -> str:
    """What the reviewer reads above the form: the figures of base, challenger and champion,
    the gate's reason and each guard's line, a few eval examples side by side, the links."""
    champion = f"v{decision.champion_version}" if decision.champion_version else "none yet"
    lines = [
        f"## Sign-off: {model_name} v{version}",
        "",
        f"The automatic gate passed ({decision.metric}); `champion` ({champion}) moves to "
        f"v{version} only when you approve. Without an answer in {timeout_s} s the request "
        "expires and the version stays `challenger`.",
        "",
        f"- MLflow run: {run_link}",
        f"- Model version: {version_link}",
        "",
        "### Figures on the eval split",
        "",
    ]
    shown = {
        "base": "base",
        "adapter": f"challenger v{version}",
        "champion": f"champion {champion}",
    }
    models = [name for name in shown if name in report]
    metrics = sorted({k for name in models for k in report[name] if "/" not in k} - {"examples"})
    lines.append("| metric | " + " | ".join(shown[m] for m in models) + " |")
    lines.append("|---|" + "---|" * len(models))
    for metric in metrics:
        cells = [f"{report[m][metric]:.4f}" if metric in report[m] else "" for m in models]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    lines += ["", "### Gate", "", f"- {_cell(decision.reason)}"]
    lines += [f"- {what}: {finding}" for what, finding in decision.checks]
    if examples:
        columns = [
            c for c in ("prompt", "expected", "base", "adapter", "champion") if c in examples[0]
        ]
        names = {**shown, "prompt": "prompt", "expected": "expected"}
        lines += ["", f"### The first {len(examples)} eval examples", ""]
        lines.append("| " + " | ".join(names[c] for c in columns) + " |")
        lines.append("|" + "---|" * len(columns))
        lines += [
            "| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in examples
        ]
    lines += [
        "",
        "Answer below: approve or reject, a comment, and your name (Prefect's open-source server "
        "records no identity of its own: the name you type is what is recorded).",
    ]
    return "\n".join(lines)
