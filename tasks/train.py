"""The training task: one call to models.train, with the loss curve relayed to MLflow."""

from __future__ import annotations

import functools
import time

from prefect import task

from models.distributed import train_adapter_distributed
from models.methods import AdapterSpec
from models.train import TrainResult, train_adapter
from tasks.runtime import logger
from tasks.tracking import client


@task(name="train-adapter")
def train(
    *,
    run_id: str,
    base_model: str,
    trust_remote_code: bool,
    train_file: str,
    prompt_field: str,
    completion_field: str,
    max_seq_len: int,
    too_long: str,
    method: str,
    spec: AdapterSpec,
    max_steps: int,
    learning_rate: float,
    batch_size: int,
    grad_accum_steps: int,
    warmup_steps: int,
    weight_decay: float,
    lr_scheduler: str,
    logging_steps: int,
    device: str,
    dtype: str,
    output_dir: str,
    config_yaml: str,
    num_processes: int = 1,
) -> TrainResult:
    """Train the adapter; the resolved config is saved beside it as loraflow.yaml."""
    mlf = client()
    log = logger()

    def relay(logs: dict[str, float], step: int) -> None:
        # Logging is best effort: a blip of the tracking server must not kill training.
        try:
            now = int(time.time() * 1000)
            for key, value in logs.items():
                # Keys already prefixed are the Trainer's end-of-run summary, logged separately.
                if not key.startswith("train_"):
                    mlf.log_metric(run_id, f"train_{key}", value, timestamp=now, step=step)
        except Exception as e:  # noqa: BLE001
            log.warning("could not log step %d to MLflow: %s", step, e)

    run = train_adapter
    if num_processes > 1:
        log.info("training with %d data-parallel processes (torchrun)", num_processes)
        run = functools.partial(train_adapter_distributed, num_processes)
    result = run(
        base_model=base_model,
        trust_remote_code=trust_remote_code,
        train_file=train_file,
        prompt_field=prompt_field,
        completion_field=completion_field,
        max_seq_len=max_seq_len,
        too_long=too_long,
        method=method,
        spec=spec,
        max_steps=max_steps,
        learning_rate=learning_rate,
        batch_size=batch_size,
        grad_accum_steps=grad_accum_steps,
        warmup_steps=warmup_steps,
        weight_decay=weight_decay,
        lr_scheduler=lr_scheduler,
        logging_steps=logging_steps,
        device=device,
        dtype=dtype,
        output_dir=output_dir,
        extra_files={"loraflow.yaml": config_yaml},
        on_log=relay,
    )
    log.info(
        "trained %s: %d/%d params trainable, final loss %.4f, %.0f tokens/s, adapter sha256 %s",
        method,
        result.trainable_params,
        result.total_params,
        result.train_loss,
        result.tokens_per_second,
        result.adapter_sha256[:12],
    )
    return result
