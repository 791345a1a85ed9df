"""MLflow tracking: where it is (the URI, never its credentials), its one-line errors, opening a
run and logging figures to it."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
import yaml
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect import task

from models.config.run import LoraflowConfig, config_from_dict
from models.errors import LoraflowError
from tasks.runtime import IO_RETRIES, logger

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

# MLflow's basic-auth app answers 401 (no or wrong credentials) and 403 (not permitted).
UNAUTHENTICATED, PERMISSION_DENIED = "UNAUTHENTICATED", "PERMISSION_DENIED"
# MLflow answers with these when the request itself is wrong: asking again cannot help.
PERMANENT_ERRORS = (
    "RESOURCE_DOES_NOT_EXIST",
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_ALREADY_EXISTS",
    UNAUTHENTICATED,
    PERMISSION_DENIED,
)
# The basic-auth app's permissions, weakest first (DENY and NO_PERMISSIONS allow nothing).
PERMISSIONS = ("NO_PERMISSIONS", "READ", "USE", "EDIT", "MANAGE")

# Where each run stores its resolved config (read back by reproduce and by promote).
CONFIG_ARTIFACT = "config/loraflow.yaml"


class TrackingError(LoraflowError):
    """MLflow could not be reached or refused a request."""

    retryable = True


# user:password@ (or a token as user) in any URI, and secret-looking query parameters.
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
_SECRET_QUERY = re.compile(r"(?i)\b(token|password|passwd|secret|key|signature)=[^&\s]+")


def redact(text: str) -> str:
    """`text` with credentials in URIs replaced by *** (messages, links, logs)."""
    return _SECRET_QUERY.sub(r"\1=***", _USERINFO.sub(r"\g<scheme>***@", text))


def safe_tracking_uri() -> str:
    """The tracking URI as it may be shown or recorded: without credentials."""
    return redact(tracking_uri())


def tracking_user() -> str:
    """Who loraflow is to the tracking server: MLFLOW_TRACKING_USERNAME, else the URI's user."""
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or urlsplit(tracking_uri()).username or ""


def access_denied(action: str, needs: str, held: str = "") -> TrackingError:
    """The one line for a refused permission: server (password masked), user, action, need."""
    has = f"has {held}, " if held else ""
    error = TrackingError(
        f"MLflow at {safe_tracking_uri()}: user '{tracking_user()}' may not {action} "
        f"({has}needs {needs})"
    )
    error.retryable = False
    return error


def credentials_refused() -> TrackingError:
    """The one line for a 401: which server (password masked), which user, what to set."""
    user = tracking_user()
    who = f"credentials of user '{user}' refused" if user else "no credentials sent"
    error = TrackingError(
        f"MLflow at {safe_tracking_uri()}: {who} (HTTP 401): set MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD"
    )
    error.retryable = False
    return error


def tracking_error(error: Exception, denied: str = "", needs: str = "EDIT") -> TrackingError:
    """One line naming the tracking server (never its credentials) and what went wrong; a
    refusal by the server's auth app names the user and, with `denied` (what the request was
    for, e.g. "change aliases of 'm'"), the permission it needs."""
    code = getattr(error, "error_code", "")
    if code == PERMISSION_DENIED and denied:
        return access_denied(denied, needs)
    if code == UNAUTHENTICATED:
        return credentials_refused()
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if code == PERMISSION_DENIED:
        first = f"user '{tracking_user()}' refused: {first}"
    wrapped = TrackingError(f"MLflow at {safe_tracking_uri()}: {redact(first)}")
    wrapped.retryable = code not in PERMANENT_ERRORS
    return wrapped


def check_reachable(timeout_s: float = 5.0) -> None:
    """Fail in one line when a tracking server (http/https URI) does not answer its health check.

    Embedded stores (sqlite, a database URI) have nothing to ping; their errors come on first use.
    """
    uri = tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    where = f"MLflow tracking server {safe_tracking_uri()}"
    try:
        answer = requests.get(uri.rstrip("/") + "/health", timeout=timeout_s)
    except requests.Timeout:
        raise TrackingError(f"{where} is unreachable (no answer within {timeout_s:g} s)") from None
    except requests.RequestException as e:
        reason = "connection refused" if "refused" in str(e).lower() else type(e).__name__
        raise TrackingError(f"{where} is unreachable ({reason})") from None
    if answer.status_code in (401, 403):
        error = TrackingError(f"{where} refused the credentials (HTTP {answer.status_code})")
        error.retryable = False
        raise error
    if answer.status_code != 200:
        raise TrackingError(f"{where} is not healthy (HTTP {answer.status_code} on /health)")


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set, else the embedded sqlite store in the working directory.

    The default is made absolute here: MLflow caches one store per URI string for the life of the
    process, so a relative `sqlite:///mlflow.db` would keep writing to whichever directory was
    current when it was first opened.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return "sqlite:///" + str(Path.cwd() / DEFAULT_TRACKING_URI.removeprefix("sqlite:///"))


@contextlib.contextmanager
def mlflow_errors(denied: str = "", needs: str = "EDIT"):
    """MLflow failures as TrackingError (see tracking_error for `denied`/`needs`). The original
    is dropped (`from None`), not chained: MLflow's own message names the request URL,
    credentials included, and a chained exception would print it in every traceback."""
    try:
        yield
    except MlflowException as e:
        raise tracking_error(e, denied, needs) from None


def recorded_config(run_id: str) -> LoraflowConfig | None:
    """The resolved config run `run_id` stored (CONFIG_ARTIFACT, written by open_run),
    validated; None where the run stored none (a run made by other means)."""
    mlf = client()
    with mlflow_errors(f"read run {run_id}", needs="READ"):
        stored = {a.path for a in mlf.list_artifacts(run_id, Path(CONFIG_ARTIFACT).parent.name)}
        if CONFIG_ARTIFACT not in stored:
            return None
        with tempfile.TemporaryDirectory() as scratch:
            text = Path(mlf.download_artifacts(run_id, CONFIG_ARTIFACT, scratch)).read_text()
    return config_from_dict(yaml.safe_load(text), source=f"run {run_id} config")


def check_model_permission(*, model_name: str, needs: str, action: str) -> None:
    """Fail in one line, before anything is written, when the tracking server's auth app says
    this user holds less than `needs` on the registered model. A server without the auth app
    (and an embedded store) has nothing to ask: then the write itself tells."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    uri = tracking_uri()
    if not uri.startswith(("http://", "https://")) or not tracking_user():
        return
    answer = http_request(
        get_default_host_creds(uri),
        "/api/3.0/mlflow/users/permissions/get",
        "GET",
        params={"username": tracking_user(), "resource_type": "registered_model",
                "resource_id": model_name},
        max_retries=0,
    )  # fmt: skip
    if answer.status_code == 401:
        raise credentials_refused()
    if answer.status_code != 200:
        return  # no auth app here (404), or it will not say: the write will tell
    held = answer.json().get("permission", "NO_PERMISSIONS")
    rank = PERMISSIONS.index(held) if held in PERMISSIONS else 0
    if rank < PERMISSIONS.index(needs):
        raise access_denied(action, needs, held)


def client() -> MlflowClient:
    """A client on the tracking URI; the model registry lives on the same store."""
    uri = tracking_uri()
    if redact(uri) != uri:
        # MLflow prints "View run ... at <tracking URI>" on stdout when a run ends; with
        # credentials in the URI that line would carry them to the console and the logs.
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _local_artifact_root(uri: str) -> str | None:
    # With the embedded sqlite store, artifacts go beside the database, not into whatever the
    # working directory happens to be; a tracking server decides for itself.
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return (db.parent.resolve() / "mlartifacts").as_uri()
    return None


def ensure_experiment(mlf: MlflowClient, name: str) -> str:
    """The experiment's id, creating it (with its artifact location) on first use."""
    found = mlf.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return mlf.create_experiment(name, artifact_location=_local_artifact_root(tracking_uri()))


def flatten(prefix: str, value, out: dict[str, str]) -> dict[str, str]:
    """Nested config -> {'adapter.r': '8', ...} for MLflow params."""
    if isinstance(value, dict):
        for k, v in value.items():
            flatten(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = str(value)[:6000]
    return out


@task(name="open-mlflow-run", **IO_RETRIES)
def open_run(*, experiment: str, run_name: str, config: dict, config_yaml: str, tags: dict) -> str:
    """Create the MLflow run of this fine-tune with the resolved config as params and artifact."""
    mlf = client()
    try:
        experiment_id = ensure_experiment(mlf, experiment)
        run = mlf.create_run(experiment_id, run_name=run_name, tags=tags)
        run_id = run.info.run_id
        params = flatten("", config, {})
        batch = [mlflow.entities.Param(k, v) for k, v in sorted(params.items())]
        for start in range(0, len(batch), 100):
            mlf.log_batch(run_id, params=batch[start : start + 100])
        mlf.log_text(run_id, config_yaml, CONFIG_ARTIFACT)
    except MlflowException as e:
        raise tracking_error(e, f"log runs in experiment '{experiment}'") from None
    return run_id


@task(name="log-metrics", **IO_RETRIES)
def log_metrics(*, run_id: str, metrics: dict[str, float], tags: dict[str, str] | None = None):
    """Log final figures (and tags) on the run."""
    mlf = client()
    now = int(time.time() * 1000)
    batch = [mlflow.entities.Metric(k, float(v), now, 0) for k, v in sorted(metrics.items())]
    tag_list = [mlflow.entities.RunTag(k, str(v)) for k, v in sorted((tags or {}).items())]
    with mlflow_errors():
        mlf.log_batch(run_id, metrics=batch, tags=tag_list)


@task(name="close-mlflow-run", **IO_RETRIES)
def close_run(*, run_id: str, status: str = "FINISHED") -> None:
    """Mark the run finished (or failed)."""
    with mlflow_errors():
        client().set_terminated(run_id, status=status)


def fail_run(run_id: str) -> None:
    """Mark the run FAILED: best effort and once, as the tracking server may be what failed and
    the error to report is the original one (a failure here is a warning, redacted)."""
    try:
        client().set_terminated(run_id, status="FAILED")
    except Exception as e:  # noqa: BLE001
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        logger().warning("could not mark MLflow run %s FAILED: %s", run_id, redact(first))


class BackgroundMetrics:
    """Per-step metrics sent to an MLflow run by a background thread, one batch per step.

    `log` returns at once, so a tracking server that is slow (a commit per request on sqlite, a
    round trip per request on a server) or down (MLflow retries a request for minutes) neither
    slows nor stalls training. Best effort, as a loss curve is: a batch that fails is a warning,
    and `close` waits at most `timeout` seconds for what is still queued, then drops it with a
    warning. Keys that already carry the prefix (the Trainer's end-of-run summary) are skipped.

    Why not MLflow's own asynchronous logging (`log_batch(..., synchronous=False)`), checked on
    mlflow 3.17 against a server that accepts the connection and never answers: `log` would
    return at once and waiting on its futures can be bounded, but (1) the requests run on a
    non-daemon ThreadPoolExecutor, which the interpreter joins at exit, so the training process
    cannot exit until the hung request times out (MLFLOW_HTTP_REQUEST_TIMEOUT, 120 s, times up
    to MLFLOW_HTTP_REQUEST_MAX_RETRIES=7 attempts); `flush_async_logging` waits with no bound
    at all; (2) a failed batch is logged by MLflow itself at ERROR with the request URL,
    credentials included (`http://user:password@...`); (3) the pool sends up to 10 batches at
    once (MLFLOW_ASYNC_LOGGING_THREADPOOL_SIZE, process-wide), so steps can arrive out of
    order. This one daemon thread sends in order, redacts, and never holds up exit.
    """

    def __init__(self, mlf: MlflowClient, run_id: str, log, prefix: str = "train_") -> None:
        self._mlf, self._run_id, self._log, self._prefix = mlf, run_id, log, prefix
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._send, name="loraflow-metrics", daemon=True)
        self._thread.start()

    def log(self, logs: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [
            Metric(key=f"{self._prefix}{key}", value=float(value), timestamp=now, step=step)
            for key, value in logs.items()
            if not key.startswith(self._prefix)
        ]
        if metrics:
            self._queue.put((step, metrics))

    def _send(self) -> None:
        while (item := self._queue.get()) is not None:
            step, metrics = item
            try:
                self._mlf.log_batch(self._run_id, metrics=metrics)
            except Exception as e:  # noqa: BLE001
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                self._log.warning("could not log step %d to MLflow: %s", step, redact(first))

    def close(self, timeout: float = 120.0) -> None:
        """Send what is queued (waiting at most `timeout` seconds) and stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._log.warning(
                "MLflow took more than %g s for the loss curve; %d logged steps not sent",
                timeout,
                self._queue.qsize() - 1,  # the stop marker is still queued behind them
            )
