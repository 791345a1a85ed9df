"""The training step as its own flow, for a deployment on the `gpu` work pool.

A pipeline on another machine (e.g. the `cpu` pool) opens the MLflow run, versions the data and
dispatches here with `training.deployment`; this flow pulls that exact data version from the
DVC remote, trains, evaluates base, adapter and champion on the same hardware, and publishes
the adapter, its figures and the evaluation report on the MLflow run. Nothing comes back
through local paths.
"""

from __future__ import annotations

from prefect import flow
from pydantic import Field

from models.base_model.paths import canonical_base
from models.config.run import LoraflowConfig
from tasks.base_model import fetch_base_model
from tasks.data import fetch_data_version
from tasks.evaluate import candidates_for, evaluate, publish_evaluation
from tasks.registry import fetch_version
from tasks.runtime import config_parameter
from tasks.train import clear_checkpoints, publish_adapter, train


def _run_name() -> str:
    from prefect.runtime import flow_run

    md5 = str(flow_run.parameters.get("data_md5", ""))
    return f"train-{config_parameter().adapter.method}-{md5[:8]}"


@flow(name="train-adapter", flow_run_name=_run_name, log_prints=True)
def train_remote(
    config: LoraflowConfig,
    run_id: str = Field(..., description="MLflow run the adapter is published on"),
    data_md5: str = Field(..., description="DVC md5 of the data version to train on"),
    checkpoint_key: str = Field(
        "", description="Checkpoint key of the training (resume from / save to); empty = none"
    ),
    with_evaluation: bool = Field(
        False,
        description="Also evaluate base, adapter and champion here and publish the report on "
        "the run (the pipeline dispatching here does)",
    ),
    champion_version: str = Field(
        "", description="Version of registry.model_name to evaluate as champion; empty = none"
    ),
    progress_artifacts: tuple[str, ...] = Field(
        (), description="Ids of Prefect progress artifacts (the dispatching pipeline's) to update"
    ),
) -> str:
    """Train the configured adapter on data version `data_md5`; publish it on MLflow run `run_id`.

    With a checkpoint key, checkpoints go to training.checkpoint_store every save_steps and a
    retry (or a later run with the same key) resumes; they are cleared once published. With
    with_evaluation, base, adapter and champion are evaluated here, on this pool's hardware,
    and the report is published on the run. Returns the adapter's sha256. With
    training.num_nodes > 1 every node runs this flow with the same run id; only the node of
    the global rank 0 gets the adapter and publishes (the others return "").
    """
    # An s3:// base: this worker's local copy (downloaded once into its cache, verified).
    weights = fetch_base_model(base_model=canonical_base(config.base_model))
    data_dir = fetch_data_version(md5=data_md5, remote=config.data.dvc_remote)
    local = config.with_data_dir(data_dir)
    adapter_dir = local.adapter_dir(run_id)
    result = train(
        local.train_spec(weights),
        run_id=run_id,
        output_dir=adapter_dir,
        config_yaml=local.to_yaml(),
        checkpoint_store=config.training.checkpoint_store,
        checkpoint_key=checkpoint_key or None,
        progress_artifacts=progress_artifacts,
    )
    if not result.adapter_dir:  # a node of a multi-node training other than rank 0's
        return ""
    publish_adapter(run_id=run_id, result=result)
    if with_evaluation:
        uri = f"models:/{config.registry.model_name}/{champion_version}"
        champion = fetch_version(model_uri=uri) if champion_version else None
        candidates = candidates_for(weights, result.adapter_dir, champion)
        report = evaluate(candidates=candidates, spec=local.eval_spec())
        publish_evaluation(run_id=run_id, report=report)
    if checkpoint_key and config.training.save_steps:
        clear_checkpoints(
            checkpoint_store=config.training.checkpoint_store,
            checkpoint_key=checkpoint_key,
            output_dir=adapter_dir,
        )
    return result.adapter_sha256
