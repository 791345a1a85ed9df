"""What the people watching a run see: training progress on the flow run, the loss curve after."""

from __future__ import annotations

import base64
import contextvars
import threading
from pathlib import Path
from uuid import UUID

from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)

from models.evaluation.report import plot_loss_curve
from tasks.runtime import IO_RETRIES, in_prefect_run, logger
from tasks.tracking import client, mlflow_errors, redact

PROGRESS_KEY = "training-progress"
LOSS_CURVE = "plots/loss_curve.png"  # artifact path on the MLflow run


def start_progress(description: str) -> str | None:
    """A progress artifact at 0% on the current flow run (None outside one); returns its id, which
    another process (a dispatched training) can update."""
    if not in_prefect_run():
        return None
    return str(create_progress_artifact(0.0, key=PROGRESS_KEY, description=description))


class TrainingProgress:
    """Percent of steps done and the latest loss on Prefect progress artifacts, while training runs.

    `log` (a Trainer on_log callback) only stores the newest figures; a background thread sends
    them at most every `interval` seconds, so a slow or unreachable Prefect API never holds
    training up, and only the newest figures are ever sent. Best effort: a failed update is one
    warning. `artifacts`: progress artifacts made elsewhere (the pipeline that dispatched this
    training) updated as well as this run's own.
    """

    def __init__(self, total_steps: int, artifacts: tuple[str, ...] = (), interval: float = 2.0):
        self._total, self._interval = total_steps, interval
        own = start_progress(f"step 0/{total_steps}")
        self._ids = [UUID(a) for a in [*artifacts, *([own] if own else [])]]
        self._latest: tuple[int, float | None] | None = None
        self._loss: float | None = None
        self._sent: tuple | None = None
        self._lock = threading.Lock()
        self._wake, self._closing = threading.Event(), threading.Event()
        self._warned = False
        # The Prefect settings (API URL) live in context variables: the thread runs in a copy.
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._send_loop,), name="loraflow-progress", daemon=True
        )
        if self._ids:
            self._thread.start()

    @property
    def artifact_ids(self) -> list[str]:
        return [str(a) for a in self._ids]

    def log(self, logs: dict[str, float], step: int) -> None:
        with self._lock:
            self._loss = logs.get("loss", self._loss)
            self._latest = (step, self._loss)
        self._wake.set()

    def _send_loop(self) -> None:
        while not self._closing.is_set():
            self._wake.wait()
            self._wake.clear()
            self._send()
            self._closing.wait(self._interval)  # throttle: newer figures wait for the next round
        self._send()

    def _send(self) -> None:
        with self._lock:
            latest = self._latest
        if latest is None or latest == self._sent:
            return
        step, loss = latest
        percent = min(100.0, 100.0 * step / self._total)
        text = f"step {step}/{self._total}" + (f" · loss {loss:.4f}" if loss is not None else "")
        try:
            for artifact_id in self._ids:
                update_progress_artifact(artifact_id, percent, description=text)
            self._sent = latest
        except Exception as e:  # noqa: BLE001
            if not self._warned:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                logger().warning("could not update the training progress: %s", redact(first))
                self._warned = True

    def close(self, timeout: float = 30.0) -> None:
        """Send the last figures (waiting at most `timeout` seconds) and stop the thread."""
        if not self._thread.is_alive():
            return
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout)


@task(name="record-loss-curve", **IO_RETRIES)
def record_loss_curve(
    *, run_id: str, history: list[tuple[int, float]], out_dir: str, title: str
) -> str | None:
    """The loss curve as a PNG on the MLflow run (plots/loss_curve.png) and, inline, on the flow
    run (markdown artifact `loss-curve`). Returns the PNG's path; None when no loss was logged."""
    if not history:
        logger().warning("no training loss was logged: no loss curve")
        return None
    png = plot_loss_curve(history, Path(out_dir) / Path(LOSS_CURVE).name, title)
    with mlflow_errors():
        client().log_artifact(run_id, str(png), str(Path(LOSS_CURVE).parent))
    if in_prefect_run():
        step, loss = history[-1]
        best_step, best = min(history, key=lambda point: point[1])
        # Inline (a data: URI) rather than a link to the tracking server: it shows whoever can
        # see the flow run, whatever the tracking server's address or authentication.
        inline = base64.b64encode(png.read_bytes()).decode()
        create_markdown_artifact(
            key="loss-curve",
            markdown=(
                f"### Training loss: {title}\n\n![loss curve](data:image/png;base64,{inline})\n\n"
                f"Last logged loss {loss:.4f} at step {step}; lowest {best:.4f} at step "
                f"{best_step}. The PNG is on MLflow run `{run_id}` as `{LOSS_CURVE}`."
            ),
            description="Training loss curve",
        )
    return str(png)
