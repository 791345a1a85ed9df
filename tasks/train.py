"""The training task: one call to models.training.train, with the loss curve relayed to MLflow."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from prefect import task

from models.config.specs import TrainSpec
from models.errors import LoraflowError
from models.hashing import file_sha256
from models.training.distributed import train_adapter_distributed
from models.training.resources import explain_resource_errors
from models.training.train import ADAPTER_WEIGHTS, TrainResult, train_adapter
from tasks.dashboard import TrainingProgress, start_progress
from tasks.lib import checkpoint_store as checkpoints
from tasks.runtime import IO_RETRIES, logger
from tasks.tracking import BackgroundMetrics, client


@task(name="train-adapter")
def train(
    spec: TrainSpec,
    *,
    run_id: str,
    output_dir: str,
    config_yaml: str,
    log_to_run: bool = True,
    checkpoint_store: str = "",
    checkpoint_key: str | None = None,
    callbacks: list | None = None,
    progress_artifacts: tuple[str, ...] = (),
) -> TrainResult:
    """Train the adapter into output_dir; the resolved config is saved beside it as loraflow.yaml.

    log_to_run=False keeps the loss curve off MLflow run `run_id` (a rebuild of that run).
    With spec.save_steps and checkpoint_key, checkpoints go to checkpoint_store under that key
    and training resumes from the newest one there (a retry, or a new run on the same inputs).
    callbacks: further Trainer callbacks (one process only, e.g. the benchmarks' step clock).
    While it trains, the flow run's progress artifact (and `progress_artifacts`, made by the
    pipeline that dispatched this training) show the percent of steps done and the latest loss.
    """
    mlf = client()
    log = logger()

    checkpointing = {}
    if spec.save_steps > 0 and checkpoint_key:
        store = _checkpoint_store(checkpoint_store, checkpoint_key, output_dir)
        step = checkpoints.restore(store)
        if step:
            log.info("resuming training from the checkpoint of step %d", step)
        checkpointing = {
            "checkpoint_dir": str(store.local_dir),
            "on_checkpoint": functools.partial(checkpoints.save, store),
        }

    run = functools.partial(train_adapter, callbacks=callbacks)
    if spec.num_processes * spec.num_nodes > 1:
        if callbacks:
            raise ValueError("Trainer callbacks cannot reach torchrun processes")
        log.info(
            "training with %d process(es) on each of %d node(s) (torchrun, sharding %s)",
            spec.num_processes,
            spec.num_nodes,
            spec.sharding,
        )
        # Every node of a run calls this with the same run id: the rendezvous id.
        run = functools.partial(train_adapter_distributed, job_id=run_id)
    run = explain_resource_errors(
        run,
        device=spec.device,
        output_dir=output_dir,
        batch_size=spec.batch_size,
        max_seq_len=spec.data.max_seq_len,
    )
    curve = BackgroundMetrics(mlf, run_id, log) if log_to_run else None
    progress = TrainingProgress(spec.max_steps, progress_artifacts)

    def on_log(logs: dict[str, float], step: int) -> None:
        if curve:
            curve.log(logs, step)
        progress.log(logs, step)

    try:
        result = run(
            spec,
            output_dir=output_dir,
            extra_files={"loraflow.yaml": config_yaml},
            on_log=on_log,
            **checkpointing,
        )
    finally:
        progress.close()
        if curve:
            curve.close()
    if not result.adapter_dir:
        log.info("trained %s on this node; the node of rank 0 saves the adapter", spec.method)
        return result
    log.info(
        "trained %s: %d/%d params trainable, final loss %.4f, %.0f tokens/s, adapter sha256 %s",
        spec.method,
        result.trainable_params,
        result.total_params,
        result.train_loss,
        result.tokens_per_second,
        result.adapter_sha256[:12],
    )
    return result


def _checkpoint_store(store: str, key: str, output_dir: str) -> checkpoints.CheckpointStore:
    """A training's checkpoint store; S3 checkpoints are staged beside its adapter directory."""
    return checkpoints.open_store(store=store, key=key, scratch=Path(output_dir).parent)


@task(name="clear-checkpoints", **IO_RETRIES)
def clear_checkpoints(*, checkpoint_store: str, checkpoint_key: str, output_dir: str) -> None:
    """Drop a training's checkpoints once its adapter is stored for good (registered/published)."""
    store = _checkpoint_store(checkpoint_store, checkpoint_key, output_dir)
    checkpoints.clear(store)
    logger().info("checkpoints %s cleared", store.describe())


TRAINED_ADAPTER = "trained-adapter"  # artifact path of a dispatched training's adapter on the run


class TrainingDispatchError(LoraflowError):
    """The training deployment failed or its adapter did not arrive intact."""

    retryable = False


@task(name="publish-adapter", **IO_RETRIES)
def publish_adapter(*, run_id: str, result: TrainResult) -> None:
    """Put a trained adapter and its figures on the MLflow run, for a pipeline elsewhere."""
    mlf = client()
    mlf.log_artifacts(run_id, result.adapter_dir, TRAINED_ADAPTER)
    figures = result.to_dict()
    figures.pop("adapter_dir")  # a path on this machine only
    mlf.log_text(run_id, json.dumps(figures), f"{TRAINED_ADAPTER}-result.json")
    logger().info("adapter of run %s published to the artifact store", run_id)


@task(name="fetch-trained-adapter", **IO_RETRIES)
def fetch_trained_adapter(*, run_id: str, dest: str) -> TrainResult:
    """The adapter a dispatched training published on the run, downloaded and hash-checked."""
    mlf = client()
    Path(dest).mkdir(parents=True, exist_ok=True)
    figures = json.loads(
        Path(mlf.download_artifacts(run_id, f"{TRAINED_ADAPTER}-result.json", dest)).read_text()
    )
    adapter_dir = mlf.download_artifacts(run_id, TRAINED_ADAPTER, dest)
    got = file_sha256(Path(adapter_dir) / ADAPTER_WEIGHTS)
    if got != figures["adapter_sha256"]:
        raise TrainingDispatchError(
            f"run {run_id}: downloaded adapter sha256 {got[:12]} != published "
            f"{figures['adapter_sha256'][:12]}"
        )
    return TrainResult.from_dict({**figures, "adapter_dir": adapter_dir})


@task(name="dispatch-training")
def dispatch_training(
    *,
    deployment: str,
    config: dict,
    run_id: str,
    data_md5: str,
    checkpoint_key: str = "",
    champion_version: str = "",
) -> None:
    """Run the training deployment (e.g. on the `gpu` pool) and wait for it to finish; it
    evaluates base, adapter and champion `champion_version` (empty: none) there as well. Its
    progress shows on this flow run's progress artifact as well."""
    from prefect.deployments import run_deployment

    log = logger()
    log.info("dispatching training of run %s to deployment %s", run_id, deployment)
    progress = start_progress(f"dispatched to {deployment}, waiting for a worker")
    flow_run = run_deployment(
        name=deployment,
        parameters={
            "config": config,
            "run_id": run_id,
            "data_md5": data_md5,
            "checkpoint_key": checkpoint_key,
            "with_evaluation": True,
            "champion_version": champion_version,
            "progress_artifacts": [progress] if progress else [],  # a JSON list
        },
        timeout=None,  # training takes what it takes; the deployment has its own limits
        poll_interval=1,  # notice the end within a second (Prefect's default: 5 s)
    )
    state = flow_run.state
    if state is None or not state.is_completed():
        raise TrainingDispatchError(
            f"training deployment {deployment}: flow run {flow_run.name} ended "
            f"{state.type.value if state else 'without a state'}"
        )
    log.info("training flow run %s completed", flow_run.name)
