"""Sign-off I/O: the form a paused flow run shows, the approval.* tags, the answer from the CLI.

The decisions (what is recorded, which answers are possible, what the reviewer reads) are
models.registry.approval; here Prefect's pause and MLflow's tags around them.

The waiting run pauses with `pause_flow_run(wait_for_input=ReviewForm...)`: the Prefect UI
shows the form with the review as its Markdown description; `loraflow approve|reject` answers
it through the API (`resume_flow_run` with the same input). No answer in
registry.approval_timeout: the flow run answers itself (a timer resumes it with a rejection
that it then records as expired), so the run ends with a decision instead of the Failed state
Prefect gives a pause that times out. Prefect's own pause timeout stays as a backstop.
"""

from __future__ import annotations

import threading
import time
from typing import Literal
from urllib.parse import quote
from uuid import UUID

from mlflow.exceptions import MlflowException
from prefect import pause_flow_run, task
from prefect.input import RunInput
from pydantic import Field

from models.registry.approval import (
    NOBODY,
    PENDING,
    REJECT,
    Answer,
    ApprovalError,
    expiry_note,
    waiting_run,
)
from tasks.events import DATA_LANDED, announce_approval, data_landed_event
from tasks.registry import MISSING, valid_model_name
from tasks.runtime import IO_RETRIES, logger
from tasks.tracking import client, mlflow_errors, safe_tracking_uri, tracking_error

# Prefect's pause timeout beyond registry.approval_timeout: only if the run's own timer could
# not reach the server in time does Prefect fail the paused run.
BACKSTOP_S = 300
POLL_S = 2  # how often the paused run asks whether it was answered


class ReviewForm(RunInput):
    """The sign-off form (Prefect renders it below the review)."""

    decision: Literal["approve", "reject"] = Field(
        description="approve: `champion` moves to this version; reject: it stays `challenger`"
    )
    comment: str = Field("", description="Why: recorded as approval.comment on the version")
    reviewer: str = Field(
        min_length=1,
        description="Your name, recorded as approval.by (Prefect's open-source server records "
        "no identity of its own)",
    )


@task(name="record-approval", **IO_RETRIES)
def record_approval(*, model_name: str, version: str, tags: dict[str, str]) -> dict[str, str]:
    """Write the approval.* tags on the version and announce loraflow.promotion.<status>."""
    mlf = client()
    with mlflow_errors(f"tag versions of '{model_name}'"):
        for key, value in tags.items():
            mlf.set_model_version_tag(model_name, version, key, value)
    announce_approval(model_name, version, tags)
    logger().info(
        "sign-off of %s v%s: %s%s", model_name, version, tags["approval.status"],
        f" by {tags['approval.by']}" if tags["approval.by"] else "",
    )  # fmt: skip
    return tags


def links(run_id: str, model_name: str, version: str) -> tuple[str, str]:
    """Where the reviewer opens the MLflow run and the version (no credentials in them)."""
    uri = safe_tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return f"run {run_id} in {uri}", f"models:/{model_name}/{version}"
    mlf = client()
    with mlflow_errors():
        experiment = mlf.get_run(run_id).info.experiment_id
    base = uri.rstrip("/")
    return (
        f"{base}/#/experiments/{experiment}/runs/{run_id}",
        f"{base}/#/models/{quote(model_name)}/versions/{version}",
    )


def wait_for_signoff(*, flow_run_id: str, review: str, timeout_s: int) -> Answer | None:
    """Pause this flow run until a person answers the form (or `loraflow approve|reject`);
    None when nobody did within timeout_s. Holds no GPU and no MLflow run: the caller has
    finished training, evaluation and registration, and closed the run."""
    expired = threading.Event()

    def expire() -> None:
        answer = {"decision": REJECT, "reviewer": NOBODY, "comment": expiry_note(timeout_s)}
        if resume_with(flow_run_id, answer) is None:
            expired.set()  # ours was the answer; a person's would have made this one fail

    timer = threading.Timer(timeout_s, expire)
    timer.daemon = True
    timer.start()
    try:
        form = ReviewForm.with_initial_data(description=review)
        given = pause_flow_run(
            wait_for_input=form, timeout=timeout_s + BACKSTOP_S, poll_interval=POLL_S
        )
    finally:
        timer.cancel()
        timer.join()
    if expired.is_set():
        return None
    return Answer(decision=given.decision, by=given.reviewer.strip(), comment=given.comment)


def resume_with(flow_run_id: str, run_input: dict) -> str | None:
    """Resume a paused flow run with `run_input`; None when it was accepted, else why not."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.responses import SetStateStatus

    with get_client(sync_client=True) as prefect_client:
        result = prefect_client.resume_flow_run(UUID(flow_run_id), run_input=run_input)
    if result.status == SetStateStatus.ACCEPT:
        return None
    return getattr(result.details, "reason", None) or result.status.value


def _version_tags(model_name: str, version: str) -> dict[str, str]:
    """The version's tags, or one line naming what does not exist."""
    valid_model_name(model_name)
    if not version.isdigit():
        raise ApprovalError(f"version must be a number (got {version!r})")
    mlf = client()
    try:
        mlf.get_registered_model(model_name)
    except MlflowException as e:
        if e.error_code in MISSING:
            raise ApprovalError(f"registered model {model_name!r} does not exist") from None
        raise tracking_error(e) from None
    try:
        return dict(mlf.get_model_version(model_name, version).tags)
    except MlflowException as e:
        if e.error_code in MISSING:
            raise ApprovalError(f"model {model_name!r} has no version {version}") from None
        raise tracking_error(e) from None


def prefect_server() -> str:
    """The Prefect API a waiting run is on; one line when none is configured."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ApprovalError(
            "no Prefect server: set PREFECT_API_URL to the team's server (runs wait for "
            "sign-off there; the temporary server of `loraflow run` stops with the command)"
        )
    return url


def answer_signoff(*, model_name: str, version: str, decision: str, by: str, comment: str) -> str:
    """`loraflow approve|reject`: answer the flow run that waits for sign-off of the version,
    through Prefect's API, as the form would. Checked first (one line, nothing changed): the
    model and version exist, the version is pending, its flow run is paused on this server.
    Returns the flow run's id; the run itself records the decision."""
    server = prefect_server()
    if not by.strip():
        raise ApprovalError("--by must name the reviewer (recorded as approval.by)")
    flow_run_id = waiting_run(model_name, version, _version_tags(model_name, version), decision)
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    where = f"{model_name} v{version}"
    try:
        with get_client(sync_client=True) as prefect_client:
            run = prefect_client.read_flow_run(UUID(flow_run_id))
    except ObjectNotFound:
        raise ApprovalError(
            f"{where}: its flow run {flow_run_id} is not on the Prefect server at {server}; "
            "nothing changed"
        ) from None
    if not (run.state and run.state.is_paused()):
        state = run.state.type.value if run.state else "without a state"
        raise ApprovalError(
            f"{where}: its flow run {flow_run_id} is {state}, not waiting for sign-off; "
            "nothing changed"
        )
    refused = resume_with(
        flow_run_id, {"decision": decision, "reviewer": by.strip(), "comment": comment}
    )
    if refused:
        raise ApprovalError(f"{where}: Prefect refused the answer ({refused}); nothing changed")
    return flow_run_id


def settled_status(model_name: str, version: str, timeout_s: float) -> str:
    """approval.status once the waiting run has recorded the answer (PENDING if it has not
    within timeout_s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = _version_tags(model_name, version).get("approval.status", PENDING)
        if status != PENDING or time.monotonic() >= deadline:
            return status
        time.sleep(1)


def notify_landed(source: str) -> str:
    """`loraflow notify`: send loraflow.data.landed for an s3://bucket/prefix/ source to the
    Prefect server (returns once it is sent); returns the event's resource id."""
    import asyncio

    from prefect.events import Event
    from prefect.events.clients import get_events_client

    prefect_server()
    bucket = source.removeprefix("s3://").split("/", 1)[0]
    if not source.startswith("s3://") or not bucket or any(c.isspace() for c in source):
        raise ApprovalError(f"notify: expected s3://bucket/prefix/ (got {source!r})")
    resource, payload = data_landed_event(source)
    event = Event(event=DATA_LANDED, resource=resource, payload=payload)

    async def send() -> None:
        async with get_events_client() as events:
            await events.emit(event)

    asyncio.run(send())
    return resource["prefect.resource.id"]
