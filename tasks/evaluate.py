"""Evaluation tasks: score base, adapter and champion; record the comparison."""

from __future__ import annotations

import json
import platform
from dataclasses import replace
from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact

from models.base_model.loading import resolve_device
from models.base_model.paths import is_local
from models.config.specs import EvalSpec
from models.evaluation.evaluate import evaluate_candidates, side_by_side, split_slices
from models.evaluation.report import plot_metric_vs_params
from tasks.lib.base_cache import local_base
from tasks.registry import VersionRef
from tasks.runtime import IO_RETRIES, logger
from tasks.tracking import client, log_metrics, mlflow_errors

REPORT_FILE = "eval_report.json"
# A few eval examples with each model's answer, beside the adapter (and so in the registered
# version) and on the run: what a reviewer reads before promoting.
EXAMPLES_FILE = "eval_examples.json"
EXAMPLES_SHOWN = 5


def candidates_for(
    base_model: str, adapter_dir: str, champion: VersionRef | None
) -> dict[str, tuple[str, str | None]]:
    """What to evaluate: the base, the adapter and, where its base model is found here, the
    champion (else the gate uses the figures its run recorded)."""
    candidates = {"base": (base_model, None), "adapter": (base_model, adapter_dir)}
    if champion:  # an s3:// base: its local copy (downloaded once)
        champion = replace(champion, base_model=local_base(champion.base_model))
    if champion and is_local(champion.base_model) and not Path(champion.base_model).is_dir():
        logger().warning(
            "champion v%s: base model %s not found here; using its recorded metrics",
            champion.version,
            champion.base_model,
        )
    elif champion:
        candidates["champion"] = (champion.base_model, champion.adapter_dir)
    return candidates


# log_prints off: the flows log prints, and lm-eval's `datasets` hashes functions with dill, which
# disassembles them with print() and reads its own stdout back; logged, that text went to the run's
# log (a dozen lines a candidate) and never reached dill.
@task(name="evaluate", log_prints=False)
def evaluate(
    *, candidates: dict[str, tuple[str, str | None]], spec: EvalSpec
) -> dict[str, dict[str, float]]:
    """Each candidate (base, adapter, champion) on the same eval split; the first few examples
    with every candidate's answer are saved beside the adapter (EXAMPLES_FILE)."""
    answers: dict[str, list[str]] = {}
    report = evaluate_candidates(candidates, spec, answers)
    adapter_dir = candidates.get("adapter", ("", None))[1]
    if adapter_dir and any(answers.values()):
        rows = side_by_side(spec, answers, EXAMPLES_SHOWN)
        Path(adapter_dir, EXAMPLES_FILE).write_text(json.dumps(rows, indent=2) + "\n")
    logger().info(
        "evaluated %s on %s (%s)", ", ".join(report), platform.node(), resolve_device(spec.device)
    )
    return report


def report_table(report: dict[str, dict[str, float]]) -> list[dict]:
    """Rows for the Prefect table artifact and the console: one per model, then one per model
    and slice (`model/slice`), with every figure the evaluation computed."""
    rows = []
    for name, figures in report.items():
        for part, values in split_slices(figures).items():
            row = {"model": name if part is None else f"{name}/{part}"}
            for key, value in values.items():
                row[key] = int(value) if key == "examples" else round(value, 4)
            rows.append(row)
    return sorted(rows, key=lambda r: (r["model"].count("/"), r["model"].split("/")[-1]))


@task(name="record-evaluation", **IO_RETRIES)
def record_evaluation(
    *, run_id: str, report: dict[str, dict[str, float]], adapter_dir: str
) -> None:
    """Metrics `<model>_<metric>[/<slice>]` on the MLflow run, the report beside the adapter and
    on the run, a table; the examples answered side by side (EXAMPLES_FILE, where evaluate
    wrote one) on the run (evaluation/examples.json, a table in MLflow's UI) and as a table."""
    metrics = {f"{name}_{k}": v for name, m in report.items() for k, v in m.items()}
    log_metrics.fn(run_id=run_id, metrics=metrics)
    Path(adapter_dir, REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    with mlflow_errors():
        client().log_dict(run_id, {"rows": report_table(report)}, "evaluation/table.json")
    examples_file = Path(adapter_dir, EXAMPLES_FILE)
    examples = json.loads(examples_file.read_text()) if examples_file.is_file() else []
    if examples:
        with mlflow_errors():
            client().log_table(run_id, _columns(examples), "evaluation/examples.json")
        create_table_artifact(
            table=examples,
            key="evaluation-examples",
            description=f"The first {len(examples)} eval examples: prompt, expected answer and "
            "each model's greedy answer.",
        )
    create_table_artifact(
        table=report_table(report),
        key="evaluation",
        description="Base model vs adapter (vs current champion) on the eval split"
        + (
            ", overall then per slice."
            if any("/" in k for m in report.values() for k in m)
            else "."
        ),
    )


def _columns(rows: list[dict]) -> dict[str, list]:
    """Rows as columns (MLflow's log_table), every column as long as the rows."""
    names = list(dict.fromkeys(k for row in rows for k in row))
    return {name: [row.get(name, "") for row in rows] for name in names}


REMOTE_REPORT = "trained-adapter-eval.json"  # a dispatched evaluation's report on the run


@task(name="publish-evaluation", **IO_RETRIES)
def publish_evaluation(*, run_id: str, report: dict[str, dict[str, float]]) -> None:
    """The evaluation report on the MLflow run, for the pipeline that dispatched it."""
    with mlflow_errors():
        client().log_text(run_id, json.dumps(report, sort_keys=True), REMOTE_REPORT)


@task(name="fetch-evaluation", **IO_RETRIES)
def fetch_evaluation(*, run_id: str, dest: str) -> dict[str, dict[str, float]]:
    """The report a dispatched evaluation published on the run."""
    with mlflow_errors():
        return json.loads(
            Path(client().download_artifacts(run_id, REMOTE_REPORT, dest)).read_text()
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
