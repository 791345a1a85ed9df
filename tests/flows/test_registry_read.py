"""The champion's record read without MLflow's client (tasks.registry_read) equals the client's,
on the embedded sqlite store and on a real tracking server (tracking_server in conftest.py), and
it declines (RegistryReadUnavailable: the caller asks MLflow's client) where it cannot be sure."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from tasks.registry_read import (
    RegistryReadUnavailable,
    mlflow_schema_revision,
    read_alias,
)


def registry_with_versions(name: str) -> dict[str, str]:
    """Model `name` with three versions (v3 deleted), champion on v2, challenger on v1; each
    version with lineage-like tags. Returns {alias: version}."""
    from tasks.tracking import client

    mlf = client()
    mlf.create_registered_model(name)
    for number in (1, 2, 3):
        run = mlf.create_run(mlf.create_experiment(f"{name}-{number}"))
        mv = mlf.create_model_version(
            name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
        )
        for key, value in {"data_md5": f"md5-{number}.dir", "config_sha256": f"c{number}",
                           "base_model": f"/bases/{number}", "empty": ""}.items():  # fmt: skip
            mlf.set_model_version_tag(name, mv.version, key, value)
    mlf.set_registered_model_alias(name, "champion", "2")
    mlf.set_registered_model_alias(name, "challenger", "1")
    mlf.delete_model_version(name, "3")
    return {"champion": "2", "challenger": "1"}


def assert_same_as_client(name: str, alias: str) -> None:
    from tasks.tracking import client

    expected = client().get_model_version_by_alias(name, alias)
    read = read_alias(name, alias)
    assert read is not None
    assert (read.version, read.run_id, read.tags) == (
        str(expected.version),
        expected.run_id,
        dict(expected.tags),
    )
    assert read.base_model == expected.tags["base_model"] and read.model_name == name


def test_sqlite_store_answers_as_mlflows_client_does(project):
    aliases = registry_with_versions("peek")
    for alias in aliases:
        assert_same_as_client("peek", alias)
    assert read_alias("peek", "champion").tags["empty"] == ""
    assert read_alias("peek", "no-such-alias") is None
    assert read_alias("no-such-model") is None


def test_sqlite_store_without_a_database_has_no_champion(project):
    assert not (project / "mlflow.db").exists()
    assert read_alias("anything") is None
    assert not (project / "mlflow.db").exists()  # read-only: nothing created


def test_an_unknown_schema_revision_or_setting_is_left_to_mlflow(project, monkeypatch):
    registry_with_versions("schema")
    assert read_alias("schema").version == "2"
    assert (
        mlflow_schema_revision()
        == sqlite3.connect(project / "mlflow.db")
        .execute("SELECT version_num FROM alembic_version")
        .fetchone()[0]
    )

    # A database of another MLflow (older or newer schema): not read.
    other = project / "other" / "mlflow.db"
    other.parent.mkdir()
    shutil.copy(project / "mlflow.db", other)
    with sqlite3.connect(other) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0123456789ab'")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other}")
    with pytest.raises(RegistryReadUnavailable, match="schema revision 0123456789ab"):
        read_alias("schema")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")

    # Settings that change what MLflow's client reads or how it connects.
    monkeypatch.setenv("MLFLOW_WORKSPACE", "team-a")
    with pytest.raises(RegistryReadUnavailable, match="MLFLOW_WORKSPACE"):
        read_alias("schema")
    monkeypatch.setenv("MLFLOW_WORKSPACE", "")
    assert read_alias("schema").version == "2"
    for uri in ("postgresql://postgres@127.0.0.1:5432/mlflow", "databricks", "file:///tmp/runs"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        with pytest.raises(RegistryReadUnavailable, match="store"):
            read_alias("schema")


def test_tracking_server_answers_as_mlflows_client_does(project, tracking_server, monkeypatch):
    server = f"http://127.0.0.1:{tracking_server['port']}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    aliases = registry_with_versions("peek-server")
    for alias in aliases:
        assert_same_as_client("peek-server", alias)
    assert read_alias("peek-server", "no-such-alias") is None
    assert read_alias("no-such-model") is None

    # An address that is not MLflow's API, and one where nothing listens: left to the client.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"{server}/not-mlflow")
    with pytest.raises(RegistryReadUnavailable):
        read_alias("peek-server")
    from tests.conftest import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RegistryReadUnavailable, match="ConnectionError"):
        read_alias("peek-server")
