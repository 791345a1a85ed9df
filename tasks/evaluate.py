"""Evaluation tasks: score base, adapter and champion; record the comparison."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact

from models.evaluate import evaluate_candidates
from models.report import plot_metric_vs_params
from models.specs import EvalSpec
from tasks.runtime import IO_RETRIES
from tasks.tracking import client, log_metrics

REPORT_FILE = "eval_report.json"


@task(name="evaluate")
def evaluate(
    *, candidates: dict[str, tuple[str, str | None]], spec: EvalSpec
) -> dict[str, dict[str, float]]:
    """Each candidate (base, adapter, champion) on the same eval split."""
    return evaluate_candidates(candidates, spec)


def report_table(report: dict[str, dict[str, float]]) -> list[dict]:
    """Rows for the Prefect table artifact and the console."""
    return [
        {
            "model": name,
            "eval_loss": round(m["eval_loss"], 4),
            "perplexity": round(m["perplexity"], 3),
            "exact_match": round(m["exact_match"], 4),
            "examples": int(m["examples"]),
        }
        for name, m in report.items()
    ]


@task(name="record-evaluation", **IO_RETRIES)
def record_evaluation(
    *, run_id: str, report: dict[str, dict[str, float]], adapter_dir: str
) -> None:
    """Metrics `<model>_<metric>` on the MLflow run, the report beside the adapter, a table."""
    metrics = {f"{name}_{k}": v for name, m in report.items() for k, v in m.items()}
    log_metrics.fn(run_id=run_id, metrics=metrics)
    Path(adapter_dir, REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    create_table_artifact(
        table=report_table(report),
        key="evaluation",
        description="Base model vs adapter (vs current champion) on the eval split.",
    )


COMPARISON_COLUMNS = (
    "method",
    "trainable_params",
    "adapter_bytes",
    "peak_memory_mib",
    "tokens_per_second",
    "train_seconds",
    "eval_loss",
    "exact_match",
    "version",
)


@task(name="record-comparison", **IO_RETRIES)
def record_comparison(*, run_id: str, rows: list[dict], metric: str, out_dir: str) -> str:
    """The comparison on the parent MLflow run (metrics, table, plot) and as a Prefect table."""
    metrics = {
        f"{row['method']}_{key}": row[key]
        for row in rows
        for key in COMPARISON_COLUMNS
        if key not in ("method", "version")
    }
    log_metrics.fn(run_id=run_id, metrics=metrics)
    mlf = client()
    mlf.log_dict(run_id, {"rows": rows}, "comparison/table.json")
    plot = plot_metric_vs_params(
        rows, metric, Path(out_dir) / "comparison.png", title=f"{metric} vs trainable params"
    )
    mlf.log_artifact(run_id, str(plot), "comparison")
    create_table_artifact(
        table=[{k: row[k] for k in COMPARISON_COLUMNS} for row in rows],
        key="method-comparison",
        description="Adapter methods trained on the same data version, seed and budget.",
    )
    return str(plot)
