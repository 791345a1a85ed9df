"""The loss curve goes to MLflow from a background thread: in order, and never in training's way."""

import logging
import socket

import pytest
from mlflow.tracking import MlflowClient

from tasks.tracking import BackgroundMetrics


def test_curve_arrives_in_order_one_batch_per_step(tmp_path):
    mlf = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run_id = mlf.create_run(mlf.create_experiment("curve")).info.run_id
    curve = BackgroundMetrics(mlf, run_id, logging.getLogger("test"))
    for step in (10, 20, 30):
        curve.log({"loss": 1.0 / step, "grad_norm": float(step)}, step)
    curve.log({"train_runtime": 9.0, "train_loss": 0.5}, 30)  # the end-of-run summary: skipped
    curve.close()
    history = mlf.get_metric_history(run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(10, 0.1), (20, 0.05), (30, 1.0 / 30)]
    grad_norms = mlf.get_metric_history(run_id, "train_grad_norm")
    assert [m.value for m in grad_norms] == [10.0, 20.0, 30.0]
    assert "train_train_runtime" not in mlf.get_run(run_id).data.metrics


def test_server_down_is_a_warning_not_an_error(monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    mlf = MlflowClient(tracking_uri=f"http://user:hunter2@127.0.0.1:{port}")
    curve = BackgroundMetrics(mlf, "0" * 32, logging.getLogger("test"))
    with caplog.at_level(logging.WARNING, logger="test"):
        curve.log({"loss": 1.0}, 1)
        curve.close()
    assert "could not log step 1 to MLflow" in caplog.text
    assert "hunter2" not in caplog.text


def test_a_server_that_does_not_answer_does_not_block_logging(monkeypatch, caplog):
    """The server accepts the connection and never answers: `log` has returned all the same, and
    `close` gives up after its timeout with a warning."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        mlf = MlflowClient(tracking_uri=f"http://127.0.0.1:{server.getsockname()[1]}")
        curve = BackgroundMetrics(mlf, "0" * 32, logging.getLogger("test"))
        for step in range(1, 4):
            curve.log({"loss": 1.0}, step)  # returns: the first request hangs in the thread
        server.settimeout(30)
        conn, _ = server.accept()  # the background thread's request, left unanswered
        with conn, caplog.at_level(logging.WARNING, logger="test"):
            curve.close(timeout=0.5)
    assert "MLflow took more than 0.5 s for the loss curve; 2 logged steps not sent" in caplog.text


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_refusals_by_the_auth_app_are_one_line_naming_user_and_permission(monkeypatch):
    """401/403 from MLflow's basic-auth app: one line, password masked, never retried."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, UNAUTHENTICATED

    from tasks.tracking import TrackingError, mlflow_errors

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:s3cret-pw@mlflow.internal:5000")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    cases = {
        PERMISSION_DENIED: "MLflow at http://***@mlflow.internal:5000: user 'alice' may not "
        "change aliases of 'm' (needs EDIT)",
        UNAUTHENTICATED: "MLflow at http://***@mlflow.internal:5000: credentials of user 'alice' "
        "refused (HTTP 401): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD",
    }
    for code, line in cases.items():
        with pytest.raises(TrackingError) as refused, mlflow_errors("change aliases of 'm'"):
            raise MlflowException("Permission denied (http://alice:s3cret-pw@...)", code)
        assert str(refused.value) == line and not refused.value.retryable
