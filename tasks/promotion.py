"""Promotion I/O: read the champion under the lock, move alias `champion`, record the decision.

The decision itself is models.registry.promotion.decide_promotion; nothing here decides.
"""

from __future__ import annotations

from dataclasses import replace

from prefect import task
from prefect.artifacts import create_markdown_artifact

from models.registry.approval import held_for_approval, needs_signoff
from models.registry.promotion import (
    METRIC_DIRECTIONS,
    Decision,
    Figures,
    Gate,
    decide_promotion,
)
from tasks.events import announce_decision
from tasks.lib.promotion_lock import promotion_lock
from tasks.registry import (
    CHAMPION,
    VersionRef,
    describe_version,
    find_champion,
    valid_model_name,
)
from tasks.runtime import IO_RETRIES, in_prefect_run, logger
from tasks.tracking import client, mlflow_errors, recorded_config


def recorded_gate(ref: VersionRef, metric: str, min_improvement: float) -> Gate:
    """The gate a version was registered under (its run's registry.guards, tie_breaker and
    their directions, from the config the run recorded), asking for `metric` and
    `min_improvement`: the promote flow re-runs the pipeline's gate, guards included, so a
    version a guard held back is not promoted by hand unless forced. A version whose run
    recorded no config (registered by hand, or by something else) gets the metric alone."""
    config = recorded_config(ref.run_id)
    if config is None:
        where = f"models:/{ref.model_name}/{ref.version}"
        logger().info("%s: its run recorded no config: gate on %s alone", where, metric)
        return Gate(metric=metric, min_improvement=min_improvement)
    gate = config.gate()
    return replace(
        gate,
        metric=metric,
        min_improvement=min_improvement,
        directions={**METRIC_DIRECTIONS, **gate.directions},
    )


@task(name="promote", **IO_RETRIES)
def promote(
    *,
    model_name: str,
    version: str,
    gate: Gate,
    challenger: Figures,
    champion_version: str | None,
    champion: Figures | None,
    force: bool = False,
    base: Figures | None = None,
    approval: str = "none",
) -> Decision:
    """Move `champion` to `version` only if models.registry.promotion.decide_promotion says
    so; record the decision on the version. With approval "required" (registry.approval) a
    version the gate passes does not move yet: it is recorded as awaiting approval
    (models.registry.approval.held_for_approval) and tasks.approval waits for a person.

    challenger: the version's figures (metric or metric/slice -> value). champion_version/
    champion: the champion the caller compared against (read before its evaluation) and its
    figures. base: the base model's figures on the same run (guards against the base). The
    decision is made under the model's promotion lock
    (tasks.lib.promotion_lock), against the champion read under that lock, so two promotions
    never overwrite each other's champion. The record is written before the alias moves: a
    retry that finds the version already champion has nothing left to record.
    The version's description is rewritten with the outcome, and a Prefect event
    (tasks.events) announces it.
    """
    valid_model_name(model_name, where="registry.model_name")
    mlf = client()
    denied = f"change aliases of '{model_name}'"
    with mlflow_errors(denied, needs="EDIT"), promotion_lock(mlf, model_name):
        current = find_champion(model_name, download=False)
        decision = decide_promotion(
            version=version,
            gate=gate,
            challenger=challenger,
            seen_version=champion_version,
            seen=champion,
            current_version=current.version if current else None,
            current=current.figures() if current else None,
            force=force,
            base=base,
        )
        held = needs_signoff(approval, decision)
        if held:
            decision = held_for_approval(decision)
        for key, value in decision.tags().items():
            mlf.set_model_version_tag(model_name, version, key, value)
        if decision.moves_champion:
            mlf.set_registered_model_alias(model_name, CHAMPION, version)
            now = find_champion(model_name, download=False)
            checked = decision.read_back(version, now.version if now else None)
            if checked.note != decision.note:
                mlf.set_model_version_tag(model_name, version, "promotion.note", checked.note)
            decision = checked
        figures = describe_version(mlf, model_name, version)
    if not held:  # a held version is announced as loraflow.promotion.pending (tasks.approval)
        announce_decision(model_name, version, decision, figures)
    if in_prefect_run():
        create_markdown_artifact(
            key="promotion",
            markdown=(
                f"### {model_name} v{version}: {decision.outcome}\n\n"
                + "\n".join(f"- **{k.split('.', 1)[1]}**: {v}" for k, v in decision.tags().items())
            ),
            description="Promotion gate decision",
        )
    logger().info(
        "promotion of %s v%s: %s (%s)", model_name, version, decision.outcome, decision.reason
    )
    return decision
