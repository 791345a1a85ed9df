"""`loraflow reproduce`: rebuild a registered run from what the registry recorded, and compare."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml
from prefect import flow

from models.config import config_from_dict
from models.loading import is_local
from tasks.data import fetch_data_version
from tasks.lineage import collect_lineage
from tasks.preflight import check_model_version, check_services
from tasks.registry import VersionRef
from tasks.runtime import logger
from tasks.tracking import client
from tasks.train import train


@dataclass
class Reproduction:
    """What the rebuild found: identical or not, and every recorded input that differs here."""

    run_id: str
    identical: bool
    recorded_sha256: str
    rebuilt_sha256: str
    differences: list[str] = field(default_factory=list)


def _recorded(target: str, ref: VersionRef | None) -> tuple[str, dict[str, str]]:
    """(run id, tags) of a run id, or of the version a models:/ URI resolved to."""
    if ref is not None:
        return ref.run_id, {**client().get_run(ref.run_id).data.tags, **ref.tags}
    return target, dict(client().get_run(target).data.tags)


@flow(name="reproduce", flow_run_name="reproduce-{target}", log_prints=True)
def reproduce(target: str, workdir: str = ".loraflow/reproduce") -> Reproduction:
    """Retrain from the recorded config, data version (pulled by md5) and base model; compare.

    Nothing here is read from the working tree but the DVC remote's configuration: the config
    comes from the run's artifact, the data from the remote by md5, the base model from its
    recorded path (its weights hash is checked before training).

    Stages:
      1. check: the tracking server answers; a models:/ target names a version that exists
      2. read the recorded config and lineage; compare the base model's weights and packages
      3. pull the data version by md5, retrain, compare the adapter sha256
    """
    check_services()
    ref = check_model_version(model_uri=target) if target.startswith("models:/") else None

    run_id, tags = _recorded(target, ref)
    mlf = client()
    config_file = mlf.download_artifacts(run_id, "config/loraflow.yaml", workdir)
    config_yaml = Path(config_file).read_text()
    config = config_from_dict(yaml.safe_load(config_yaml), source=f"run {run_id} config")
    base_model = tags["base_model"]
    recorded = tags.get("adapter_sha256", "")
    if is_local(base_model) and not Path(base_model).is_dir():
        return Reproduction(
            run_id, False, recorded, "", [f"base model {base_model}: not found here"]
        )
    here = collect_lineage(base_model=base_model)
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
        return Reproduction(run_id, False, recorded, "", differences)
    data_dir = fetch_data_version(md5=tags["data_md5"], remote=config.data.dvc_remote)
    local = config.with_data_dir(data_dir)
    result = train(
        local.train_spec(base_model),
        run_id=run_id,
        output_dir=str(Path(workdir) / run_id / "adapter"),  # never over the run's own
        config_yaml=local.to_yaml(),
        log_to_run=False,
    )
    identical = result.adapter_sha256 == recorded
    if not identical:
        differences.insert(
            0, f"adapter sha256: recorded {recorded[:16]}, rebuilt {result.adapter_sha256[:16]}"
        )
    logger().info("reproduce %s: %s", run_id, "identical" if identical else "; ".join(differences))
    return Reproduction(run_id, identical, recorded, result.adapter_sha256, differences)
