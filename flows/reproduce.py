"""`loraflow reproduce`: rebuild a registered run from what the registry recorded, and compare."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prefect import flow

from models.base_model.paths import is_local
from models.errors import LoraflowError
from models.registry.reproduction import (
    DIFFERENT,
    EQUIVALENT,
    IDENTICAL,
    changed_tags,
    check_metrics,
    max_abs_difference,
    verdict,
)
from models.training.train import ADAPTER_WEIGHTS
from tasks.base_model import fetch_base_model
from tasks.data import fetch_data_version
from tasks.evaluate import evaluate
from tasks.lineage import collect_lineage
from tasks.preflight import check_model_version, check_services
from tasks.registry import VersionRef, fetch_version
from tasks.runtime import logger
from tasks.tracking import CONFIG_ARTIFACT, client, recorded_config
from tasks.train import train


@dataclass
class Reproduction:
    """What the rebuild found: its outcome and every recorded input or figure that differs here.

    outcome: identical (same adapter bytes), equivalent (bytes differ, every recorded adapter
    metric within models.registry.reproduction.METRIC_TOLERANCES) or different.
    metrics: each recorded adapter metric against the rebuilt adapter's (when bytes differ).
    max_abs_diff: largest |recorded - rebuilt| over the adapter's tensors (None: not compared).
    environment: the hardware / numeric environment tags (`env.*`) of the recorded training
    that differ from the rebuild's.
    """

    run_id: str
    recorded_sha256: str
    rebuilt_sha256: str
    differences: list[str] = field(default_factory=list)
    outcome: str = DIFFERENT
    metrics: list[str] = field(default_factory=list)
    max_abs_diff: float | None = None
    environment: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return self.outcome == IDENTICAL


def _recorded(target: str, ref: VersionRef | None) -> tuple[str, dict[str, str]]:
    """(run id, tags) of a run id, or of the version a models:/ URI resolved to."""
    if ref is not None:
        return ref.run_id, {**client().get_run(ref.run_id).data.tags, **ref.tags}
    return target, dict(client().get_run(target).data.tags)


def _registered_uri(target: str, run_id: str) -> str | None:
    """The models:/ URI holding the run's recorded adapter (the first version made from it)."""
    if target.startswith("models:/"):
        return target
    found = client().search_model_versions(f"run_id = '{run_id}'")
    first = min(found, key=lambda mv: int(mv.version), default=None)
    return f"models:/{first.name}/{first.version}" if first else None


@flow(name="reproduce", flow_run_name="reproduce-{target}", log_prints=True)
def reproduce(target: str, workdir: str = ".loraflow/reproduce") -> Reproduction:
    """Retrain from the recorded config, data version (pulled by md5) and base model; compare.

    Nothing here is read from the working tree but the DVC remote's configuration: the config
    comes from the run's artifact, the data from the remote by md5, the base model from its
    recorded path (its weights hash is checked before training). When the adapter's bytes
    differ, the rebuilt adapter is evaluated on the same eval split and judged against the
    recorded metrics (models.registry.reproduction).

    Stages:
      1. check: the tracking server answers; a models:/ target names a version that exists
      2. read the recorded config and lineage; compare the base model's weights and packages
      3. pull the data version by md5, retrain, compare the adapter sha256
      4. bytes differ: evaluate the rebuilt adapter, compare with the recorded metrics
    """
    check_services()
    ref = check_model_version(model_uri=target) if target.startswith("models:/") else None

    run_id, tags = _recorded(target, ref)
    config = recorded_config(run_id)
    if config is None:
        raise LoraflowError(f"run {run_id}: it recorded no config ({CONFIG_ARTIFACT})")
    base_model = tags["base_model"]
    recorded = tags.get("adapter_sha256", "")
    if is_local(base_model) and not Path(base_model).is_dir():
        return Reproduction(run_id, recorded, "", [f"base model {base_model}: not found here"])
    weights = fetch_base_model(base_model=base_model)  # an s3:// base: its local copy
    here = collect_lineage(base_model=base_model, weights_dir=weights)
    differences = [
        f"package {key.removeprefix('version.')}: recorded {value}, here {here[key]}"
        for key, value in sorted(tags.items())
        if key.startswith("version.") and key in here and here[key] != value
    ]
    if here["base_model_sha256"] != tags.get("base_model_sha256"):
        differences.insert(
            0,
            f"base model {base_model}: weights sha256 recorded "
            f"{tags.get('base_model_sha256', '?')[:16]}, here {here['base_model_sha256'][:16]}",
        )
        return Reproduction(run_id, recorded, "", differences)
    data_dir = fetch_data_version(md5=tags["data_md5"], remote=config.data.dvc_remote)
    local = config.with_data_dir(data_dir)
    result = train(
        local.train_spec(weights),
        run_id=run_id,
        output_dir=str(Path(workdir) / run_id / "adapter"),  # never over the run's own
        config_yaml=local.to_yaml(),
        log_to_run=False,
    )
    # The environment the rebuild trained in against the one the recorded training ran in.
    environment = changed_tags(tags, result.tags(), "env.")
    if result.adapter_sha256 == recorded:
        logger().info("reproduce %s: identical", run_id)
        return Reproduction(
            run_id, recorded, result.adapter_sha256, differences, IDENTICAL, environment=environment
        )

    differences.insert(
        0, f"adapter sha256: recorded {recorded[:16]}, rebuilt {result.adapter_sha256[:16]}"
    )
    rebuilt = evaluate(
        candidates={"adapter": (weights, result.adapter_dir)}, spec=local.eval_spec()
    )["adapter"]
    recorded_metrics = {
        name.removeprefix("adapter_"): value
        for name, value in client().get_run(run_id).data.metrics.items()
        if name.startswith("adapter_")
    }
    checks = check_metrics(recorded_metrics, rebuilt)
    max_diff = None
    uri = _registered_uri(target, run_id)
    if uri:
        version = fetch_version(model_uri=uri)
        max_diff = max_abs_difference(
            Path(version.adapter_dir) / ADAPTER_WEIGHTS, Path(result.adapter_dir) / ADAPTER_WEIGHTS
        )
    outcome = verdict(False, checks)
    if not checks:
        differences.append("no recorded adapter metrics to compare with")
    differences += [check.describe() for check in checks if not check.within]
    logger().info("reproduce %s: %s; %s", run_id, outcome, "; ".join(differences))
    return Reproduction(
        run_id,
        recorded,
        result.adapter_sha256,
        differences,
        outcome,
        metrics=[check.describe() for check in checks],
        max_abs_diff=max_diff,
        environment=environment,
    )


__all__ = ["DIFFERENT", "EQUIVALENT", "IDENTICAL", "Reproduction", "reproduce"]
