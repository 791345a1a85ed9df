"""Prefect events for what a team may want to act on: promotions, kept champions, skips, failures.

A team wires them to Prefect automations (notify, run the export deployment, ...) without code.
Every model event's resource is `loraflow.model.<model name>` with these labels (all strings):
  loraflow.model.name, loraflow.model.version, loraflow.model.uri (models:/<name>/<version>),
  loraflow.metric.<metric> (the adapter's figure for each evaluation metric),
  and for promotion decisions loraflow.promotion.outcome, loraflow.promotion.metric,
  loraflow.champion.version (the champion it was compared with; "none" if there was none).
Inside a flow run Prefect adds the flow run, flow and deployment as related resources.
Sign-off (registry.approval: required) emits loraflow.promotion.<status> (pending, approved,
rejected, expired) on the same resource, with the version's approval.* tags as labels.
New data emits loraflow.data.landed on `loraflow.data.<source prefix>` (data_landed_event):
the resource is the prefix, never the object, so a deployment trigger can debounce per source.
"""

from __future__ import annotations

from uuid import UUID

from prefect.events import emit_event

from tasks.runtime import in_prefect_run, logger

PROMOTED = "loraflow.model.promoted"  # alias champion moved to the version (forced too)
NOT_PROMOTED = "loraflow.model.not-promoted"  # the gate kept the champion
SKIPPED = "loraflow.model.skipped"  # scheduled retraining found nothing changed
RUN_FAILED = "loraflow.run.failed"  # a fine-tune run failed or crashed
EVENTS = (PROMOTED, NOT_PROMOTED, SKIPPED, RUN_FAILED)
APPROVAL_PREFIX = "loraflow.promotion."  # + approval.status
DATA_LANDED = "loraflow.data.landed"  # new objects under a data source (loraflow notify)


def model_resource(model_name: str, version: str | None, metrics: dict[str, float]) -> dict:
    """The model (version) an event is about, its figures as labels."""
    resource = {
        "prefect.resource.id": f"loraflow.model.{model_name}",
        "prefect.resource.name": model_name,
        "loraflow.model.name": model_name,
    }
    if version:
        resource["loraflow.model.version"] = version
        resource["loraflow.model.uri"] = f"models:/{model_name}/{version}"
    resource.update({f"loraflow.metric.{k}": f"{v:.6g}" for k, v in sorted(metrics.items())})
    return resource


def _emit(
    event: str, resource: dict, payload: dict, hook: bool = False, event_id: UUID | None = None
) -> None:
    # Outside a flow or task run (task.fn in a notebook) there is no API to send to; a flow's
    # state hook runs in the engine, with its API, whether or not the run's context is still set.
    if not (hook or in_prefect_run()):
        return
    emit_event(event=event, resource=resource, payload=payload, id=event_id)
    logger().info("event %s emitted for %s", event, resource["prefect.resource.name"])


def announce_decision(model_name: str, version: str, decision, metrics: dict[str, float]) -> None:
    """loraflow.model.promoted or .not-promoted for a promotion decision (registry.promotion);
    nothing for a version that already was the champion (nothing changed)."""
    if decision.promote and not decision.moves_champion:
        return
    resource = model_resource(model_name, version, metrics)
    resource["loraflow.promotion.outcome"] = decision.outcome
    resource["loraflow.promotion.metric"] = decision.metric
    resource["loraflow.champion.version"] = decision.champion_version or "none"
    event = PROMOTED if decision.moves_champion else NOT_PROMOTED
    _emit(event, resource, {"reason": decision.reason, "record": decision.tags()})


def announce_skip(
    model_name: str, champion_version: str, data_md5: str, event_id: UUID | None = None
) -> None:
    """loraflow.model.skipped: inputs equal the champion's, nothing was trained. With `event_id`,
    a second send of the same event is stored once (Prefect keeps one event per id)."""
    resource = model_resource(model_name, champion_version, {})
    payload = {"reason": "unchanged since champion", "data_md5": data_md5}
    _emit(SKIPPED, resource, payload, event_id=event_id)


def announce_failure(model_name: str, mlflow_run_id: str | None, state) -> None:
    """loraflow.run.failed for a fine-tune flow run that failed or crashed."""
    resource = model_resource(model_name, None, {})
    resource["loraflow.run.state"] = state.type.value
    if mlflow_run_id:
        resource["loraflow.mlflow.run_id"] = mlflow_run_id
    message = (state.message or "").strip().splitlines()
    _emit(RUN_FAILED, resource, {"message": message[0][:500] if message else ""}, hook=True)


def announce_approval(model_name: str, version: str, tags: dict[str, str]) -> None:
    """loraflow.promotion.<approval.status> for a version's sign-off, its approval.* tags as
    labels (models.registry.approval)."""
    resource = model_resource(model_name, version, {})
    resource.update({f"loraflow.{k}": v for k, v in tags.items()})
    _emit(APPROVAL_PREFIX + tags["approval.status"], resource, {"record": tags})


def data_landed_event(source: str) -> tuple[dict, dict]:
    """The resource and payload of loraflow.data.landed for an s3://bucket/prefix/ source (with
    its trailing slash: one resource per prefix, however it was spelled)."""
    prefix = source.rstrip("/") + "/"
    resource = {
        "prefect.resource.id": f"loraflow.data.{prefix}",
        "prefect.resource.name": prefix,
        "loraflow.data.source": prefix,
    }
    return resource, {"source": prefix}
