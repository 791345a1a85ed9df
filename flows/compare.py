"""The adapter methods side by side, as one Prefect flow."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from models.base_model.paths import canonical_base
from models.config.file import apply_overrides
from models.config.run import ConfigError, LoraflowConfig, config_from_dict
from tasks.base_model import checked_base, fetch_base_model
from tasks.data import push_data, version_data
from tasks.evaluate import evaluate, record_comparison
from tasks.lineage import collect_lineage, run_tags
from tasks.preflight import check_inputs, check_services
from tasks.registry import register_adapter
from tasks.tracking import close_run, log_metrics, open_run
from tasks.train import train


def method_configs(config: LoraflowConfig, methods: list[str]) -> dict[str, LoraflowConfig]:
    """One validated config per method: the same everything, only adapter.method differs."""
    if not methods:
        raise ConfigError("--methods: name at least one method")
    raw = config.model_dump(mode="json")
    return {
        m: config_from_dict(apply_overrides(raw, [f"adapter.method={m}"]), source=f"method {m}")
        for m in methods
    }


@flow(name="compare", log_prints=True)
def compare(config: LoraflowConfig, methods: list[str]) -> list[dict]:
    """Train every listed method on the same data version, seed and budget, and compare them.

    Stages:
      1. check inputs for every method, and the services (nothing is written unless all pass)
      2. version data once: `dvc add` + `dvc push`
      3. open a parent MLflow run; evaluate the base model once
      4. per method, in a child run: train -> evaluate -> register (alias = the method's name)
      5. record the comparison: table (MLflow + Prefect) and a plot of metric vs trainable params
    """
    configs = method_configs(config, methods)
    base_model = canonical_base(config.base_model)
    # An s3:// base is read from its local copy (the lineage keeps the URI), as in finetune.
    weights = fetch_base_model(base_model=base_model)
    for method_config in configs.values():
        check_inputs(method_config.check_spec(checked_base(config.base_model, weights)))
    check_services(export_to=config.export.destination)

    dataset = version_data(data_dir=config.data.path)
    push_data(dataset=dataset, remote=config.data.dvc_remote)
    lineage = collect_lineage(base_model=base_model, weights_dir=weights)

    parent = open_run(
        experiment=config.registry.experiment,
        run_name=f"compare-{dataset.md5[:8]}",
        config=config.model_dump(mode="json"),
        config_yaml=config.to_yaml(),
        tags={**run_tags(config, lineage, dataset.md5), "method": ",".join(methods)},
    )
    base_report = evaluate(candidates={"base": (weights, None)}, spec=config.eval_spec())
    log_metrics(run_id=parent, metrics={f"base_{k}": v for k, v in base_report["base"].items()})

    rows = []
    for method, method_config in configs.items():
        tags = run_tags(method_config, lineage, dataset.md5)
        run_id = open_run(
            experiment=config.registry.experiment,
            run_name=f"{method}-{dataset.md5[:8]}",
            config=method_config.model_dump(mode="json"),
            config_yaml=method_config.to_yaml(),
            tags={**tags, "mlflow.parentRunId": parent},
        )
        adapter = train(
            method_config.train_spec(weights),
            run_id=run_id,
            output_dir=method_config.adapter_dir(run_id),
            config_yaml=method_config.to_yaml(),
        )
        scores = evaluate(
            candidates={"adapter": (weights, adapter.adapter_dir)},
            spec=method_config.eval_spec(),
        )["adapter"]
        log_metrics(
            run_id=run_id,
            metrics={**adapter.metrics(), **{f"adapter_{k}": v for k, v in scores.items()}},
            tags=adapter.tags(),
        )
        version = register_adapter(
            run_id=run_id,
            adapter_dir=adapter.adapter_dir,
            base_model=weights,
            model_name=config.registry.model_name,
            tags={**tags, **adapter.tags()},
            max_new_tokens=config.evaluation.max_new_tokens,
            alias=method,
        )
        close_run(run_id=run_id)
        rows.append(
            {
                "method": method,
                "trainable_params": adapter.trainable_params,
                "adapter_bytes": adapter.adapter_bytes,
                "peak_memory_mib": round(adapter.peak_memory_bytes / 2**20, 1),
                "tokens_per_second": round(adapter.tokens_per_second, 1),
                "train_seconds": round(adapter.train_seconds, 1),
                "eval_loss": round(scores["eval_loss"], 4),
                "exact_match": round(scores["exact_match"], 4),
                "version": version,
            }
        )
    record_comparison(
        run_id=parent,
        rows=rows,
        metric=config.registry.promote_metric,
        out_dir=str(Path(config.training.output_dir) / parent),
    )
    close_run(run_id=parent)
    return [
        {
            **row,
            "base_eval_loss": base_report["base"]["eval_loss"],
            "base_exact_match": base_report["base"]["exact_match"],
        }
        for row in rows
    ]
