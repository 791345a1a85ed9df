"""Whether a run could change anything: the one "unchanged" decision, and its record.

A run whose data version, resolved config and base weights all equal the champion's
(models.registry.promotion.changed_inputs) would train again what the registry already serves.
Scheduled retraining (`skip_if_unchanged`: the nightly deployment, `loraflow run
--skip-unchanged`) asks `check_unchanged`; when it answers with the champion, the flow records the
skip with `record_skip` and stops. flows.finetune asks once: before its other stages where the data
is versioned as it stands (tasks.lineage.hash_inputs: no dvc, no model loaded), else after
`dvc add` has versioned it.
"""

from __future__ import annotations

import uuid

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.runtime import flow_run

from models.registry.promotion import RETRAIN_INPUTS, changed_inputs
from tasks.events import announce_skip
from tasks.registry import VersionRef, find_champion
from tasks.runtime import IO_RETRIES, logger

ARTIFACT_KEY = "retrain-check"


@task(name="check-unchanged", **IO_RETRIES)
def check_unchanged(*, model_name: str, inputs: dict[str, str]) -> VersionRef | None:
    """The champion when `inputs` (data_md5, config_sha256, base_model_sha256) all equal its
    tags; None, said in a log line, when there is no champion or anything differs. Reads only."""
    champion = find_champion(model_name, download=False)
    if champion is None:
        logger().info("no champion of %s yet: training", model_name)
        return None
    changed = changed_inputs(inputs, champion.tags)
    if changed:
        logger().info(
            "changed since champion v%s: %s: training", champion.version, ", ".join(changed)
        )
        return None
    return champion


@task(name="record-skip", **IO_RETRIES)
def record_skip(*, model_name: str, champion: VersionRef, inputs: dict[str, str]) -> None:
    """The skip on the flow run (artifact `retrain-check`, a log line) and for automations (event
    loraflow.model.skipped). Once per flow run, also when retried after a partial write: the
    artifact is written only where the run has none yet, and the event's id is derived from the
    run's, so Prefect stores it once."""
    run_id = flow_run.id
    if not (run_id and _has_artifact(run_id)):
        create_markdown_artifact(
            key=ARTIFACT_KEY,
            markdown=(
                f"### {model_name}: unchanged, skipped\n\n"
                f"Data md5, config sha256 and base model sha256 equal those of champion "
                f"v{champion.version} (run {champion.run_id}); nothing was trained.\n\n"
                + "\n".join(f"- **{k}**: {inputs[k]}" for k in RETRAIN_INPUTS)
            ),
            description="Retrain check",
        )
    logger().info("unchanged since champion v%s: skipped training", champion.version)
    event_id = uuid.uuid5(uuid.NAMESPACE_URL, f"loraflow:skipped:{run_id}") if run_id else None
    announce_skip(model_name, champion.version, inputs["data_md5"], event_id=event_id)


def _has_artifact(run_id: str) -> bool:
    with get_client(sync_client=True) as prefect_client:
        found = prefect_client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[ARTIFACT_KEY]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(str(run_id))]),
            ),
            limit=1,
        )
    return bool(found)
