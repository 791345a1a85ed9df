"""What a person reads at a glance in the model registry: a version's and a model's description.

Plain functions of what is recorded (the version's tags, its run's metrics); MLflow renders
descriptions as Markdown.
"""

from __future__ import annotations

MODELS = ("adapter", "base", "champion")  # the evaluation report's rows, as metric prefixes
TRAINING_FIGURES = {"adapter_bytes"}  # same prefix, not an evaluation figure


def headline_metrics(run_metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """{metric: {model: value}} from a run's `<model>_<metric>` evaluation figures."""
    table: dict[str, dict[str, float]] = {}
    for key, value in sorted(run_metrics.items()):
        model, _, metric = key.partition("_")
        if model in MODELS and metric and key not in TRAINING_FIGURES:
            table.setdefault(metric, {})[model] = value
    return {metric: row for metric, row in table.items() if "adapter" in row}


def version_description(tags: dict[str, str], run_metrics: dict[str, float]) -> str:
    """Method, base model, data version, the evaluation figures and the promotion outcome."""
    lines = [
        f"**{tags.get('method', '?')}** adapter of `{tags.get('base_model', '?')}`, "
        f"data md5 `{tags.get('data_md5', '?')[:12]}`, seed {tags.get('seed', '?')}, "
        f"git commit `{tags.get('git_commit', '?')[:12]}`",
        "",
    ]
    table = headline_metrics(run_metrics)
    if table:
        models = [m for m in MODELS if any(m in row for row in table.values())]
        lines += [
            "| metric | " + " | ".join(models) + " |",
            "|---" * (len(models) + 1) + "|",
            *(
                f"| {metric} | "
                + " | ".join(f"{row[m]:.4f}" if m in row else "" for m in models)
                + " |"
                for metric, row in table.items()
            ),
            "",
        ]
    outcome = tags.get("promotion.outcome")
    if outcome:
        lines.append(f"**Promotion:** {outcome}: {tags.get('promotion.reason', '')}")
    else:
        lines.append("**Promotion:** not decided yet (alias `challenger`)")
    return "\n".join(lines)


def model_description(model_name: str) -> str:
    """What the registered model is, for a reader who finds it in the registry."""
    return (
        f"Adapters fine-tuned by loraflow, one version per pipeline run. Each version's "
        f"description gives its method, base model, data version, evaluation figures and "
        f"promotion outcome; its tags hold the full lineage (data md5, git commit, config and "
        f"base model sha256, adapter sha256).\n\n"
        f"Alias `challenger`: the newest registered version. Alias `champion`: the version in "
        f"use, moved only when a challenger passes the promotion gate (or by a forced "
        f"promotion).\n\n"
        f'Load it with `mlflow.pyfunc.load_model("models:/{model_name}@champion")`.'
    )
