"""The training step as its own flow, for a deployment on the `gpu` work pool.

A pipeline on another machine (e.g. the `cpu` pool) opens the MLflow run, versions the data and
dispatches here with `training.deployment`; this flow pulls that exact data version from the
DVC remote, trains, and publishes the adapter and its figures on the MLflow run. Nothing comes
back through local paths.
"""

from __future__ import annotations

from prefect import flow
from pydantic import Field

from flows.stages import config_parameter, train_args, with_data_dir
from models.config import LoraflowConfig
from models.loading import canonical_base
from tasks.data import fetch_data_version
from tasks.train import publish_adapter, train


def _run_name() -> str:
    from prefect.runtime import flow_run

    md5 = str(flow_run.parameters.get("data_md5", ""))
    return f"train-{config_parameter().adapter.method}-{md5[:8]}"


@flow(name="train-adapter", flow_run_name=_run_name, log_prints=True)
def train_remote(
    config: LoraflowConfig,
    run_id: str = Field(..., description="MLflow run the adapter is published on"),
    data_md5: str = Field(..., description="DVC md5 of the data version to train on"),
) -> str:
    """Train the configured adapter on data version `data_md5`; publish it on MLflow run `run_id`.

    Returns the adapter's sha256.
    """
    data_dir = fetch_data_version(md5=data_md5, remote=config.data.dvc_remote)
    local = with_data_dir(config, data_dir)
    result = train(**train_args(local, canonical_base(config.base_model), run_id))
    publish_adapter(run_id=run_id, result=result)
    return result.adapter_sha256
