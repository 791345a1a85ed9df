"""An unchanged rerun, decided and recorded in seconds: the fast path of `--skip-unchanged`.

The full pipeline (flows.finetune) decides "unchanged" after its checks and `dvc add`, in a
process that has imported torch and transformers for training it then skips. Here the same
decision (registry.promotion.changed_inputs on data md5, config sha256, base weights sha256)
is made from what can be read without them: the data directory hashed as `dvc add` hashes it (and
equal to what its .dvc file records), the config's hash, the base weights' hash (remembered by
size and mtime), the champion's registry tags (tasks.registry_read, without MLflow's client
where it can). Only when all are equal does a light flow run, named like the pipeline's, record
the skip; otherwise the full pipeline runs and decides itself.
"""

from __future__ import annotations

from prefect import flow

from flows.summary import RunSummary, run_name, skipped_summary
from models.config.run import LoraflowConfig
from models.registry.promotion import changed_inputs
from tasks.lineage import current_inputs
from tasks.registry_read import RegistryReadUnavailable, VersionRef, read_alias, record_unchanged
from tasks.runtime import config_parameter
from tasks.tracking_store import check_reachable


def _run_name() -> str:
    from prefect.runtime import flow_run

    return run_name(config_parameter(), flow_run.parameters["inputs"]["data_md5"])


@flow(name="finetune", flow_run_name=_run_name, log_prints=True)
def finetune_unchanged(
    config: LoraflowConfig, champion: VersionRef, inputs: dict[str, str]
) -> RunSummary:
    """The pipeline's run for inputs equal to the champion's: nothing trained or registered.

    Records the skip and its reason as a skipped pipeline run does: artifact `retrain-check`, a
    log line, the event loraflow.model.skipped.
    """
    record_unchanged(config.registry.model_name, champion, inputs)
    return skipped_summary(config, champion, inputs["data_md5"])


def record_skip(config: LoraflowConfig, champion: VersionRef, inputs: dict[str, str]) -> RunSummary:
    """Run finetune_unchanged without flow-run heartbeats: they exist to tell a live run from a
    dead one over minutes, this run takes a second, and stopping the heartbeat thread waits out
    its one-second sleep (up to a second of an unchanged rerun's few)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        return finetune_unchanged(config, champion, inputs)


def unchanged_champion_of(config: LoraflowConfig) -> tuple[VersionRef, dict[str, str]] | None:
    """The champion and this run's inputs when they are all equal; None when anything differs,
    there is no champion, or the data is not versioned as it stands (the pipeline decides)."""
    inputs = current_inputs(config)
    if inputs is None:
        return None
    check_reachable()  # a silent server: one line now, not minutes of MLflow's retries
    try:  # seconds cheaper than MLflow's client, which answers where this cannot
        champion = read_alias(config.registry.model_name)
    except RegistryReadUnavailable:
        from tasks.registry import find_champion

        champion = find_champion(config.registry.model_name, download=False)
    if champion is None or changed_inputs(inputs, champion.tags):
        return None
    return champion, inputs
