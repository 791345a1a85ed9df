"""Keyword arguments for the tasks, taken from the run config; shared by the flows.

A flow reads like its pipeline diagram; the mapping from config fields to each task's flat
arguments lives here once.
"""

from __future__ import annotations

from pathlib import Path

from models.config import LoraflowConfig
from models.train import TrainResult
from tasks.lib import checkpoint_store as checkpoints


def config_parameter() -> LoraflowConfig:
    """The running flow's `config` parameter as a LoraflowConfig (for flow-run names)."""
    from prefect.runtime import flow_run

    config = flow_run.parameters.get("config")
    return LoraflowConfig.model_validate(config) if isinstance(config, dict) else config


def with_data_dir(config: LoraflowConfig, data_dir: str) -> LoraflowConfig:
    """The same config reading its splits from `data_dir` (a data version pulled by md5)."""
    return config.model_copy(update={"data": config.data.model_copy(update={"path": data_dir})})


def check_args(config: LoraflowConfig, base_model: str) -> dict:
    """For tasks.preflight.check_inputs."""
    data = config.data
    return {
        "base_model": base_model,
        "trust_remote_code": config.base_model_trust_remote_code,
        "target_modules": config.adapter.target_modules,
        "data_dir": data.path,
        "train_file": data.train_file,
        "eval_file": data.eval_file,
        "prompt_field": data.prompt_field,
        "completion_field": data.completion_field,
        "method": config.adapter.method,
        "max_seq_len": data.max_seq_len,
        "too_long": data.too_long,
    }


def train_args(
    config: LoraflowConfig, base_model: str, run_id: str, checkpoint_key: str | None = None
) -> dict:
    """For tasks.train.train; the adapter goes to <training.output_dir>/<run id>/adapter.

    checkpoint_key (see tasks.lib.checkpoint_store.checkpoint_key): checkpoint every
    training.save_steps and resume from an earlier run's checkpoints with the same key; None =
    no checkpoints.
    """
    data, training = config.data, config.training
    return {
        "run_id": run_id,
        "base_model": base_model,
        "trust_remote_code": config.base_model_trust_remote_code,
        "train_file": str(Path(data.path) / data.train_file),
        "prompt_field": data.prompt_field,
        "completion_field": data.completion_field,
        "max_seq_len": data.max_seq_len,
        "too_long": data.too_long,
        "method": config.adapter.method,
        "spec": config.adapter.to_spec(),
        "max_steps": training.max_steps,
        "learning_rate": training.learning_rate,
        "batch_size": training.batch_size,
        "grad_accum_steps": training.grad_accum_steps,
        "warmup_steps": training.warmup_steps,
        "weight_decay": training.weight_decay,
        "lr_scheduler": training.lr_scheduler,
        "logging_steps": training.logging_steps,
        "device": training.device,
        "dtype": training.dtype,
        "num_processes": training.num_processes,
        "packing": training.packing,
        "threads": training.cpu_threads,
        "gradient_checkpointing": training.gradient_checkpointing,
        "output_dir": str(Path(training.output_dir) / run_id / "adapter"),
        "config_yaml": config.to_yaml(),
        "save_steps": training.save_steps if checkpoint_key else 0,
        "checkpoint_store": training.checkpoint_store,
        "checkpoint_key": checkpoint_key,
        "deterministic": training.deterministic,
    }


def training_key(tags: dict[str, str]) -> str:
    """The checkpoint key of a run from its lineage tags (config, data and base weights)."""
    return checkpoints.checkpoint_key(
        config_sha256=tags["config_sha256"],
        data_md5=tags["data_md5"],
        base_model_sha256=tags["base_model_sha256"],
    )


def eval_args(config: LoraflowConfig) -> dict:
    """For tasks.evaluate.evaluate (everything but the candidates)."""
    data, evaluation = config.data, config.evaluation
    return {
        "eval_file": str(Path(data.path) / data.eval_file),
        "prompt_field": data.prompt_field,
        "completion_field": data.completion_field,
        "max_seq_len": data.max_seq_len,
        "batch_size": evaluation.batch_size,
        "max_new_tokens": evaluation.max_new_tokens,
        "max_examples": evaluation.max_examples,
        "trust_remote_code": config.base_model_trust_remote_code,
    }


def run_tags(config: LoraflowConfig, lineage: dict[str, str], data_md5: str) -> dict[str, str]:
    """Lineage tags carried by the MLflow run and the model version."""
    return {
        **lineage,
        "data_md5": data_md5,
        "config_sha256": config.sha256(),
        "method": config.adapter.method,
        "seed": str(config.adapter.seed),
    }


def train_metrics(adapter: TrainResult) -> dict[str, float]:
    """Training figures logged on the run."""
    return {
        "trainable_params": adapter.trainable_params,
        "total_params": adapter.total_params,
        "adapter_bytes": adapter.adapter_bytes,
        "train_loss_final": adapter.train_loss,
        "train_seconds": adapter.train_seconds,
        "train_tokens_per_second": adapter.tokens_per_second,
        "train_peak_memory_bytes": adapter.peak_memory_bytes,
        "truncated_examples": adapter.truncated_examples,
        "resumed_from_step": adapter.resumed_from_step,
    }
