"""The registry's record of a version, read without MLflow's client; the skip it supports.

An unchanged nightly rerun (flows.unchanged) needs one thing from the registry: the tags of the
version behind alias `champion`. MLflow's client costs seconds to import and to open its sqlite
store, more than the whole rest of that decision, so it is read here directly:
- a tracking server (http/https): MLflow's REST call for a version by alias, with the same
  credentials MLflow's client would send (user:password in the URI, MLFLOW_TRACKING_USERNAME and
  MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN);
- the embedded sqlite store: one read-only query, only when the database is at the schema
  revision the installed MLflow writes (its newest migration), whose tables this reads.
Anything else (other stores, TLS or auth settings this does not send, workspaces, a server error,
a schema it does not know) raises RegistryReadUnavailable, and the caller asks MLflow's client.
tests/flows/test_registry_read.py checks the answers equal the client's on both kinds of store.
"""

from __future__ import annotations

import ast
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from prefect.artifacts import create_markdown_artifact

from models.registry.promotion import LINEAGE_KEYS, recorded_key
from tasks.events import announce_skip
from tasks.runtime import logger
from tasks.tracking_store import tracking_uri

CHAMPION, CHALLENGER = "champion", "challenger"
DELETED = "Deleted_Internal"  # MLflow's stage for a deleted version whose row stays
# What MLflow answers for a model or alias that does not exist (as tasks.registry reads them).
MISSING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
# Settings that change how MLflow's client talks to a server or which store it reads; where any is
# set, MLflow's client answers instead of this module.
_CLIENT_SETTINGS = (
    "MLFLOW_TRACKING_AUTH",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
    "MLFLOW_WORKSPACE",
    "MLFLOW_ENABLE_WORKSPACES",
)


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


class RegistryReadUnavailable(Exception):
    """This module cannot answer for this store or setting; MLflow's client can."""


def read_alias(model_name: str, alias: str = CHAMPION) -> VersionRef | None:
    """The version behind `alias` with its tags (no adapter download, no run metrics), or None
    when the model or the alias does not exist. Raises RegistryReadUnavailable (see above)."""
    for setting in _CLIENT_SETTINGS:
        if os.environ.get(setting, "").strip().lower() not in ("", "false", "0"):
            raise RegistryReadUnavailable(f"{setting} is set")
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        found = _read_from_server(uri, model_name, alias)
    elif uri.startswith("sqlite:///"):
        found = _read_from_sqlite(Path(uri.removeprefix("sqlite:///")), model_name, alias)
    else:
        raise RegistryReadUnavailable(f"store {uri.split(':', 1)[0]!r}")
    if found is None:
        return None
    version, run_id, tags = found
    return VersionRef(
        model_name=model_name,
        version=version,
        run_id=run_id,
        base_model=tags.get("base_model", ""),
        adapter_dir="",
        tags=tags,
        recorded_metrics={},
    )


def _read_from_server(uri: str, model_name: str, alias: str):
    import requests

    auth = None
    headers = {}
    user, password = (
        os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    )
    if user and password:
        auth = (user, password)
    elif token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {token}"
    try:
        answer = requests.get(
            uri.rstrip("/") + "/api/2.0/mlflow/registered-models/alias",
            params={"name": model_name, "alias": alias},
            auth=auth,
            headers=headers,
            timeout=10,
        )
        body = answer.json()
    except (requests.RequestException, ValueError) as e:
        raise RegistryReadUnavailable(type(e).__name__) from None
    if answer.status_code in (400, 404) and body.get("error_code") in MISSING:
        return None  # no such model, or no such alias on it (MLflow says the latter with 400)
    if answer.status_code != 200 or "model_version" not in body:
        raise RegistryReadUnavailable(f"HTTP {answer.status_code}")
    mv = body["model_version"]
    tags = {t["key"]: t.get("value", "") for t in mv.get("tags", [])}
    return str(mv["version"]), mv.get("run_id", ""), tags


def _read_from_sqlite(db: Path, model_name: str, alias: str):
    if not db.is_file():
        return None  # no store yet: nothing registered
    try:
        with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True) as conn:
            [(revision,)] = conn.execute("SELECT version_num FROM alembic_version").fetchall()
            if revision != mlflow_schema_revision():
                raise RegistryReadUnavailable(f"schema revision {revision}")
            row = conn.execute(
                "SELECT v.version, v.run_id FROM registered_model_aliases a "
                "JOIN model_versions v ON v.workspace = a.workspace AND v.name = a.name "
                "AND v.version = a.version "
                "WHERE a.workspace = 'default' AND a.name = ? AND a.alias = ? "
                "AND v.current_stage != ?",
                (model_name, alias, DELETED),
            ).fetchone()
            if row is None:
                return None
            version, run_id = row
            tags = dict(
                conn.execute(
                    "SELECT key, value FROM model_version_tags "
                    "WHERE workspace = 'default' AND name = ? AND version = ?",
                    (model_name, version),
                ).fetchall()
            )
    except (sqlite3.Error, ValueError) as e:
        raise RegistryReadUnavailable(f"sqlite: {e}") from None
    return str(version), run_id or "", {k: v or "" for k, v in tags.items()}


def mlflow_schema_revision() -> str:
    """The newest migration of the installed MLflow (the revision no other migration follows),
    read from its migration scripts without importing MLflow or Alembic."""
    from importlib.util import find_spec

    spec = find_spec("mlflow")
    if spec is None or not spec.submodule_search_locations:
        raise RegistryReadUnavailable("mlflow is not installed")
    versions = Path(next(iter(spec.submodule_search_locations))) / "store/db_migrations/versions"
    revisions, parents = set(), set()
    for script in versions.glob("*.py"):
        for node in ast.parse(script.read_text()).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = getattr(node.targets[0], "id", "")
                if target in ("revision", "down_revision"):
                    names = _strings(node.value)
                    (revisions if target == "revision" else parents).update(names)
    heads = revisions - parents
    if len(heads) != 1:
        raise RegistryReadUnavailable(f"{len(heads)} migration heads")
    return heads.pop()


def _strings(node: ast.expr) -> list[str]:
    """The revision names of `revision = "x"` / `down_revision = ("x", "y")` / `= None`."""
    if isinstance(node, ast.Constant):
        return [node.value] if isinstance(node.value, str) else []
    if isinstance(node, ast.Tuple | ast.List):
        return [n for element in node.elts for n in _strings(element)]
    return []


def record_unchanged(model_name: str, champion: VersionRef, tags: dict[str, str]) -> None:
    """Inside a flow run: the skip and its reason on the run (artifact `retrain-check`, a log
    line) and for automations (event loraflow.model.skipped)."""
    create_markdown_artifact(
        key="retrain-check",
        markdown=(
            f"### {model_name}: unchanged, skipped\n\n"
            f"Data md5, config sha256 and base model sha256 equal those of champion "
            f"v{champion.version} (run {champion.run_id}); nothing was trained.\n\n"
            + "\n".join(f"- **{k}**: {tags[k]}" for k in LINEAGE_KEYS)
        ),
        description="Retrain check",
    )
    logger().info("unchanged since champion v%s: skipped training", champion.version)
    announce_skip(model_name, champion.version, tags["data_md5"])
