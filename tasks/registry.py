"""MLflow model registry: look versions up, fetch the champion, register the adapter."""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from prefect import task
from prefect.artifacts import create_link_artifact

import models
from models.base_model.identity import base_model_sha256
from models.base_model.paths import canonical_base
from models.config.run import check_model_name
from models.data.chat import load_prompt_format
from models.errors import LoraflowError
from models.registry.promotion import recorded_key
from models.registry.summary import headline_metrics, model_description, version_description
from tasks.lib import pyfunc_schema
from tasks.lineage import remembered_hashes
from tasks.runtime import IO_RETRIES, in_prefect_run, logger
from tasks.tracking import client, mlflow_errors, safe_tracking_uri, tracking_error

CHAMPION, CHALLENGER = "champion", "challenger"
# What MLflow answers for a model or alias that does not exist.
MISSING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


class RegistryError(LoraflowError):
    """A registered model, version or alias that does not exist."""


@dataclass(frozen=True)
class VersionRef:
    """A registered version: which one, its lineage tags and its adapter on local disk."""

    model_name: str
    version: str
    run_id: str
    base_model: str
    adapter_dir: str
    tags: dict[str, str]
    recorded_metrics: dict[str, float]

    def recorded(self, metric: str) -> float | None:
        """The adapter's `metric` as its run recorded it at evaluation, or None."""
        return self.recorded_metrics.get(recorded_key(metric))

    def figures(self) -> dict[str, float]:
        """Every figure its run recorded for the adapter (adapter_<metric>[/<slice>]), by
        metric: what the promotion gate compares."""
        prefix = recorded_key("")
        return {
            k.removeprefix(prefix): v
            for k, v in self.recorded_metrics.items()
            if k.startswith(prefix)
        }

    def base_figures(self) -> dict[str, float]:
        """The base model's figures on the same run (base_<metric>[/<slice>]), by metric: what
        a guard against the base compares."""
        return {
            k.removeprefix("base_"): v for k, v in self.recorded_metrics.items()
            if k.startswith("base_")
        }  # fmt: skip


PYFUNC_FILE = Path(__file__).parent / "lib" / "pyfunc_model.py"
MODELS_DIR = Path(models.__file__).parent
# The pyfunc resolves an s3:// base through tasks.lib.base_cache: the version carries `tasks` too.
TASKS_DIR = Path(__file__).parent


_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")


def _missing(e: MlflowException) -> bool:
    return e.error_code in MISSING


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """models:/name@alias or models:/name/version -> (name, alias, version)."""
    match = _URI.match(uri)
    if not match:
        raise RegistryError(f"{uri!r}: expected models:/<name>@<alias> or models:/<name>/<version>")
    valid_model_name(match["name"], where=uri)
    return match["name"], match["alias"], match["version"]


def valid_model_name(name: str, where: str = "model name") -> str:
    """The name, or a RegistryError: MLflow refuses '/' and ':', and the name becomes a path
    component of local exports and S3 keys, so `..` and the like are refused as well."""
    try:
        return check_model_name(name)
    except ValueError as e:
        raise RegistryError(f"{where}: {e}") from None


def resolve_version(model_uri: str, download: bool = True) -> VersionRef:
    """Look the version up and download its adapter; one-line errors for what does not exist.

    With download=False only the registry is read (adapter_dir is then empty).
    """
    name, alias, number = parse_model_uri(model_uri)
    mlf = client()
    try:
        mlf.get_registered_model(name)
    except MlflowException as e:
        if _missing(e):
            raise RegistryError(f"{model_uri}: registered model {name!r} does not exist") from None
        raise tracking_error(e) from None
    try:
        mv = (
            mlf.get_model_version_by_alias(name, alias)
            if alias
            else mlf.get_model_version(name, number)
        )
    except MlflowException as e:
        if _missing(e):
            what = f"alias {alias!r} points to no version" if alias else f"no version {number}"
            raise RegistryError(f"{model_uri}: {what} of model {name!r}") from None
        raise tracking_error(e) from None
    if not str(mv.version).isdigit():  # it becomes a path component below and in exports
        raise RegistryError(f"{model_uri}: registry answered version {mv.version!r}")
    with mlflow_errors():
        local = (
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}")
            if download
            else ""
        )
        metrics = mlf.get_run(mv.run_id).data.metrics if mv.run_id else {}
    return VersionRef(
        model_name=name,
        version=str(mv.version),
        run_id=mv.run_id or "",
        base_model=mv.tags.get("base_model", ""),
        adapter_dir=_adapter_artifact(Path(local)) if local else "",
        tags=dict(mv.tags),
        recorded_metrics=dict(metrics),
    )


def _adapter_artifact(model_dir: Path) -> str:
    """Where a downloaded version keeps its adapter: the pyfunc's `adapter` artifact path in
    MLmodel (artifacts/<name of the directory that was logged>), inside the download."""
    import yaml

    try:
        meta = yaml.safe_load((model_dir / "MLmodel").read_text())
        relative = meta["flavors"]["python_function"]["artifacts"]["adapter"]["path"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        relative = "artifacts/adapter"
    found = (model_dir / relative).resolve()
    if not found.is_relative_to(model_dir.resolve()):  # MLmodel is registry content too
        raise RegistryError(f"{model_dir}/MLmodel: adapter path {relative!r} leaves the model")
    return str(found)


@task(name="fetch-version", **IO_RETRIES)
def fetch_version(*, model_uri: str) -> VersionRef:
    """The registered version behind a models:/ URI, with its adapter downloaded."""
    return resolve_version(model_uri)


def find_champion(model_name: str, download: bool = True) -> VersionRef | None:
    """The version behind alias `champion` (its adapter downloaded unless told not), or None."""
    try:
        return resolve_version(f"models:/{model_name}@{CHAMPION}", download=download)
    except RegistryError:
        return None


@task(name="fetch-champion", **IO_RETRIES)
def fetch_champion(*, model_name: str, download: bool = True) -> VersionRef | None:
    """The version behind alias `champion` with its adapter downloaded (unless told not), or
    None if there is none."""
    return find_champion(model_name, download=download)


def pip_requirements() -> list[str]:
    """What the pyfunc needs at load time, pinned to what trained it."""
    from importlib.metadata import version

    import torch

    torch_version = torch.__version__.split("+")[0]
    reqs = [f"torch=={torch_version}"]
    packages = ("transformers", "peft", "safetensors", "accelerate", "boto3")
    return reqs + [f"{p}=={version(p)}" for p in packages]


def base_record(base_model: str, tags: dict[str, str]) -> dict[str, str]:
    """What a version records of its base in model_config, for serving_base at load time: the
    base as the run's config named it and its weights sha256, from the lineage tags; where the
    tags lack them, `base_model` (the local weights trained on) and their hash now."""
    named = canonical_base(tags.get("base_model") or base_model)
    sha256 = tags.get("base_model_sha256")
    if not sha256:
        with remembered_hashes() as hashes:
            sha256 = base_model_sha256(canonical_base(base_model), hashes)
    return {"base_model": named, "base_model_sha256": sha256}


@contextlib.contextmanager
def _quiet_model_logger():
    # log_model also tries to log model_config as run params; the run already has the config's
    # `base_model` as written (maybe relative) while model_config holds it resolved, and MLflow
    # warns about the clash. The resolved base is in model_config and the version's tags.
    model_logger = logging.getLogger("mlflow.models.model")
    level = model_logger.level
    model_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        model_logger.setLevel(level)


def _registered_for_run(mlf, model_name: str, run_id: str, adapter_sha256: str) -> str | None:
    """A version of `model_name` already made from this run's adapter (an earlier attempt of
    register_adapter whose answer was lost), or None."""
    try:
        found = mlf.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    except MlflowException as e:
        if _missing(e):
            return None
        raise
    same = [mv for mv in found if mv.tags.get("adapter_sha256") == adapter_sha256]
    return str(min(int(mv.version) for mv in same)) if same else None


def _check_logged(mlf, model_id: str, adapter_dir: str) -> None:
    """Every file of the adapter is in the logged model's artifacts, at its size."""
    # MLflow stores a directory artifact under its own name: artifacts/<adapter_dir's name>.
    subdir = f"artifacts/{Path(adapter_dir).name}"
    stored = {
        Path(f.path).name: f.file_size
        for f in mlf.list_logged_model_artifacts(model_id, subdir)
        if not f.is_dir
    }
    for path in Path(adapter_dir).iterdir():
        if path.is_file() and stored.get(path.name) != path.stat().st_size:
            raise RegistryError(
                f"logged model {model_id}: artifact {subdir}/{path.name} missing or incomplete "
                "in the artifact store; no version was registered"
            )


@task(name="register-adapter", **IO_RETRIES)
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

    All or nothing, and safe to retry: the artifacts are uploaded and checked first, then the
    version is created with all its tags in one request, so no version exists without its
    artifacts and tags. A retry after a lost answer or a failed alias finds the version this run
    already made (same run id and adapter sha256) instead of registering a second one.

    base_model: the local weights the adapter was trained on (an s3:// base's cached copy); the
    version records the base as the config named it, from `tags` (base_record).
    """
    valid_model_name(model_name, where="registry.model_name")
    mlf = client()
    fmt = load_prompt_format(adapter_dir)
    with mlflow_errors(f"register versions of '{model_name}'", needs="EDIT"):
        version = _registered_for_run(mlf, model_name, run_id, tags.get("adapter_sha256", ""))
        if version is None:
            # The signature is given explicitly (tasks.lib.pyfunc_schema); MLflow's hint about
            # type hints is noise here. The input example costs one load of the model: MLflow
            # validates it by serving it once.
            with mlflow.start_run(run_id=run_id), warnings.catch_warnings(), _quiet_model_logger():
                warnings.simplefilter("ignore", UserWarning)
                info = mlflow.pyfunc.log_model(
                    name="adapter",
                    python_model=str(PYFUNC_FILE),
                    artifacts={"adapter": adapter_dir},
                    code_paths=[str(MODELS_DIR), str(TASKS_DIR)],
                    model_config={
                        **base_record(base_model, tags),
                        "allow_other_base": False,  # a key MLflow lets load_model override
                        "max_new_tokens": max_new_tokens,
                    },
                    signature=pyfunc_schema.signature(fmt, max_new_tokens),
                    input_example=pyfunc_schema.input_example(fmt),
                    pip_requirements=pip_requirements(),
                )
            _check_logged(mlf, info.model_id, adapter_dir)
            version = str(mlflow.register_model(info.model_uri, model_name, tags=tags).version)
        else:
            logger().info("run %s already registered as %s v%s", run_id, model_name, version)
        mlf.set_registered_model_alias(model_name, alias, version)
        if not mlf.get_registered_model(model_name).description:  # a team's own text stays
            mlf.update_registered_model(model_name, description=model_description(model_name))
        describe_version(mlf, model_name, version)
    logger().info("registered %s version %s (alias %s)", model_name, version, alias)
    if in_prefect_run():
        _link_artifacts(mlf, run_id, model_name, version)
    return version


def describe_version(mlf, model_name: str, version: str) -> dict[str, float]:
    """Write the version's description from its tags and its run's evaluation figures (see
    models.registry.summary); returns the adapter's figures, {metric: value}."""
    mv = mlf.get_model_version(model_name, version)
    metrics = mlf.get_run(mv.run_id).data.metrics if mv.run_id else {}
    text = version_description(dict(mv.tags), dict(metrics))
    mlf.update_model_version(model_name, version, description=text)
    return {metric: row["adapter"] for metric, row in headline_metrics(dict(metrics)).items()}


def _link_artifacts(mlf, run_id: str, model_name: str, version: str) -> None:
    """Dashboard links to the MLflow run and model version, where MLflow has a web UI."""
    uri = safe_tracking_uri().rstrip("/")  # a link is shown to everyone: no credentials in it
    if not uri.startswith(("http://", "https://")):
        return
    with mlflow_errors():
        experiment_id = mlf.get_run(run_id).info.experiment_id
    create_link_artifact(
        key="mlflow-run",
        link=f"{uri}/#/experiments/{experiment_id}/runs/{run_id}",
        link_text=f"MLflow run {run_id}",
    )
    create_link_artifact(
        key="mlflow-model-version",
        link=f"{uri}/#/models/{model_name}/versions/{version}",
        link_text=f"{model_name} v{version}",
    )
