"""Users and permissions on an MLflow server run with its basic-auth app (`--app-name basic-auth`).

    MLFLOW_TRACKING_URI=http://mlflow:5000 MLFLOW_TRACKING_USERNAME=admin \
    MLFLOW_TRACKING_PASSWORD=... python infra/mlflow_access.py /run/secrets/mlflow-users.yaml

Logs in as the admin (the standard MLflow variables) and makes the server match the users file,
which lives outside the repository (a Docker/Kubernetes secret, a file only the admin reads;
infra/mlflow-users.example.yaml shows its shape). Safe to run again: users that exist get the
file's password, grants are overwritten.

Roles (everyone else gets the server's default_permission, READ):
- pipeline: MANAGE on each listed experiment and registered model (log runs, register, move
  aliases); the experiments and models are created here when missing, so that whoever runs the
  pipeline first does not end up their owner.
- release-manager: EDIT on each listed registered model: may move `champion` by hand
  (`loraflow promote --force`, rollbacks); MLflow checks alias changes against EDIT.
- reader: nothing beyond the default (READ): may look, not change.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

ROLES = {"pipeline": "MANAGE", "release-manager": "EDIT", "reader": None}


def load_users(path: Path) -> dict:
    """The users file, checked: every user has a name, a real password (given in the file, or by
    `password_env`: the variable holding it, e.g. the one the workers log in with) and a role."""
    spec = yaml.safe_load(path.read_text()) or {}
    for i, user in enumerate(spec.get("users", [])):
        where = f"{path}: users[{i}]"
        if "password_env" in user:
            user["password"] = os.environ.get(user["password_env"], "")
        if not user.get("name") or user.get("password", "") in ("", "CHANGE-ME"):
            raise SystemExit(f"{where}: needs a name and a password (not empty, not CHANGE-ME)")
        if user.get("role") not in ROLES:
            got = user.get("role")
            raise SystemExit(f"{where}.role: must be one of {sorted(ROLES)} (got {got!r})")
    return spec


def ensure_user(auth, name: str, password: str) -> None:
    from mlflow.exceptions import RestException

    try:
        auth.get_user(name)
    except RestException:
        auth.create_user(name, password)
        print(f"user {name}: created")
        return
    auth.update_user_password(name, password)
    print(f"user {name}: exists, password set from the file")


def grant(auth, name: str, resource_type: str, resource_id: str, permission: str) -> None:
    """Set the user's permission on one resource, replacing an earlier grant."""
    from mlflow.exceptions import RestException

    try:
        auth.grant_user_permission(name, resource_type, resource_id, permission)
    except RestException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        auth.revoke_user_permission(name, resource_type, resource_id)
        auth.grant_user_permission(name, resource_type, resource_id, permission)
    print(f"user {name}: {permission} on {resource_type.replace('_', ' ')} {resource_id}")


def main(users_file: str) -> None:
    import mlflow
    import mlflow.server
    from mlflow import MlflowClient
    from mlflow.exceptions import RestException

    spec = load_users(Path(users_file))
    uri = mlflow.get_tracking_uri()
    auth = mlflow.server.get_app_client("basic-auth", tracking_uri=uri)
    mlf = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiments = {}
    for name in spec.get("experiments", []):
        found = mlf.get_experiment_by_name(name)
        experiments[name] = found.experiment_id if found else mlf.create_experiment(name)
    for name in spec.get("models", []):
        try:
            mlf.create_registered_model(name)
        except RestException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    for user in spec.get("users", []):
        ensure_user(auth, user["name"], user["password"])
        permission = ROLES[user["role"]]
        if permission is None:
            continue
        for model in spec.get("models", []):
            grant(auth, user["name"], "registered_model", model, permission)
        if user["role"] == "pipeline":
            for experiment_id in experiments.values():
                grant(auth, user["name"], "experiment", experiment_id, permission)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    from mlflow.exceptions import MlflowException

    try:
        main(sys.argv[1])
    except MlflowException as e:  # one line, e.g. a password MLflow finds too short
        raise SystemExit(f"{sys.argv[1]}: MLflow refused: {e.message.splitlines()[0]}") from None
