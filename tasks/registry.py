"""MLflow model registry: fetch the champion, register the adapter, move aliases."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from prefect import task
from prefect.artifacts import create_markdown_artifact

import models
from models.promotion import Decision, decide
from tasks.runtime import logger
from tasks.tracking import RETRY_DELAYS, TrackingError, client, tracking_uri

CHAMPION, CHALLENGER = "champion", "challenger"
PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
MODELS_DIR = Path(models.__file__).parent


@dataclass(frozen=True)
class ChampionRef:
    """The current champion: which version, its base model and its adapter on local disk."""

    version: str
    run_id: str
    base_model: str
    adapter_dir: str
    recorded_metrics: dict[str, float]


def _missing(e: MlflowException) -> bool:
    return e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


@task(name="fetch-champion", retries=len(RETRY_DELAYS), retry_delay_seconds=RETRY_DELAYS)
def fetch_champion(*, model_name: str) -> ChampionRef | None:
    """The version behind alias `champion` with its adapter downloaded, or None if there is none."""
    mlf = client()
    try:
        version = mlf.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException as e:
        if _missing(e):
            return None
        raise TrackingError(f"MLflow at {tracking_uri()}: {str(e).splitlines()[0]}") from e
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{model_name}/{version.version}"
    )
    metrics = mlf.get_run(version.run_id).data.metrics if version.run_id else {}
    return ChampionRef(
        version=str(version.version),
        run_id=version.run_id or "",
        base_model=version.tags.get("base_model", ""),
        adapter_dir=str(Path(local) / "artifacts" / "adapter"),
        recorded_metrics=dict(metrics),
    )


def pip_requirements() -> list[str]:
    """What the pyfunc needs at load time, pinned to what trained it."""
    from importlib.metadata import version

    torch_version = torch.__version__.split("+")[0]
    reqs = [f"torch=={torch_version}"]
    reqs += [f"{p}=={version(p)}" for p in ("transformers", "peft", "safetensors", "accelerate")]
    return reqs


@task(name="register-adapter", retries=len(RETRY_DELAYS), retry_delay_seconds=RETRY_DELAYS)
def register_adapter(
    *,
    run_id: str,
    adapter_dir: str,
    base_model: str,
    model_name: str,
    tags: dict[str, str],
    max_new_tokens: int,
    alias: str = CHALLENGER,
) -> str:
    """Log the adapter as a pyfunc model on the run, register a version, alias it (`challenger`).

    The version is created with all its tags in one call, so no version exists without them.
    """
    mlf = client()
    signature = infer_signature(["prompt"], ["generated text"], params={"max_new_tokens": 32})
    try:
        # The signature is given explicitly; MLflow's hints about type hints and input examples
        # (an input example would load the model once more just to log it) are noise here.
        with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            info = mlflow.pyfunc.log_model(
                name="adapter",
                python_model=str(PYFUNC_FILE),
                artifacts={"adapter": adapter_dir},
                code_paths=[str(MODELS_DIR)],
                model_config={"base_model": base_model, "max_new_tokens": max_new_tokens},
                signature=signature,
                pip_requirements=pip_requirements(),
            )
        version = mlflow.register_model(info.model_uri, model_name, tags=tags)
        mlf.set_registered_model_alias(model_name, alias, version.version)
    except MlflowException as e:
        raise TrackingError(f"MLflow at {tracking_uri()}: {str(e).splitlines()[0]}") from e
    logger().info("registered %s version %s (alias %s)", model_name, version.version, alias)
    return str(version.version)


@task(name="promote", retries=len(RETRY_DELAYS), retry_delay_seconds=RETRY_DELAYS)
def promote(
    *,
    model_name: str,
    version: str,
    metric: str,
    challenger_value: float,
    champion_version: str | None,
    champion_value: float | None,
    min_improvement: float,
) -> Decision:
    """Move `champion` to `version` only if it beats the current champion; record the decision."""
    mlf = client()
    decision = decide(metric, challenger_value, champion_value, min_improvement)
    if decision.promote:
        mlf.set_registered_model_alias(model_name, CHAMPION, version)
    outcome = "promoted" if decision.promote else f"kept champion v{champion_version}"
    record = {
        "promotion.outcome": outcome,
        "promotion.metric": metric,
        "promotion.challenger": f"{challenger_value:.6g}",
        "promotion.champion": "none" if champion_value is None else f"{champion_value:.6g}",
        "promotion.champion_version": champion_version or "none",
        "promotion.reason": decision.reason,
    }
    for key, value in record.items():
        mlf.set_model_version_tag(model_name, version, key, value)
    create_markdown_artifact(
        key="promotion",
        markdown=(
            f"### {model_name} v{version}: {outcome}\n\n"
            + "\n".join(f"- **{k.split('.', 1)[1]}**: {v}" for k, v in record.items())
        ),
        description="Promotion gate decision",
    )
    logger().info("promotion of %s v%s: %s (%s)", model_name, version, outcome, decision.reason)
    return decision
