"""Sign-off before promotion (registry.approval: required) on a real team stack, as a reviewer
does it: the Prefect UI in headless chromium, `loraflow approve|reject`, and no answer at all.

One stack for the module (bench.team_stack, Prefect's UI on): three finetune runs start at
once, each for its own model so their versions are v1 each; they pause after registration.
One is approved in the browser, one rejected from the command line, one left to expire.
The data trigger (prefect.yaml's finetune-on-data) is tested on the same server.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
import uuid
from datetime import UTC, datetime

import pytest

from bench.team_stack import BIN, TeamStack, cli, deploy_code
from models.errors import LoraflowError
from tests.browser import PageFailures, browser_page, require_chromium
from tests.conftest import REPO
from tests.flows.test_team import flow_run_record, postgres_or_skip, tiny_config

pytestmark = pytest.mark.slow

UI, CLI, LATE = "signoff-ui", "signoff-cli", "signoff-late"
TIMEOUTS = {UI: 1800, CLI: 1800, LATE: 15}  # registry.approval_timeout, seconds
SCREENSHOT = REPO / "docs" / "images" / "signoff-form.png"
# What Prefect's UI (3.9.1) gets refused by our server of its own accord, each with why it is
# harmless; any other failed request, console error or page error fails the UI test.
BEFORE_LOGIN = {
    # The app shell asks for the version without the auth string to learn whether to ask for it;
    # its error handler turns that 401 into the toast "Oops. Something went wrong." that stays
    # after login (PrefectHQ/prefect#18518, docs/team.md).
    "HTTP 401 /api/admin/version": "the UI's auth probe, before the password is typed",
}
TAB_ICONS = {
    "HTTP 404 /favicon.ico": "index.html links an icon at the root; Prefect serves it under /ico/",
    "HTTP 404 /ico/undefined.svg": "the run page sets the tab icon to /ico/<state>.svg before the "
    "run has loaded",
    "HTTP 404 /ico/paused.svg": "... and Prefect ships no tab icon for the Paused state",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, project_template, tiny_base):
    postgres_or_skip().close()
    root = tmp_path_factory.mktemp("signoff")
    project = root / "project"
    shutil.copytree(project_template, project, symlinks=True)
    deploy_code(project)
    team = TeamStack(root, project, models=[UI, CLI, LATE], pool_limits={"gpu": 1, "cpu": 3},
                     ui=True)  # fmt: skip
    try:
        yield team.start()
    finally:
        team.stop()


def state_of(stack, flow_run_id: str) -> str:
    return flow_run_record({"env": stack.env}, flow_run_id)["state"]


def wait_state(stack, flow_run_id: str, states: set[str], timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while (record := flow_run_record({"env": stack.env}, flow_run_id))["state"] not in states:
        assert time.monotonic() < deadline, record
        assert record["state"] not in ("FAILED", "CRASHED"), record
        time.sleep(1)
    return record


@pytest.fixture(scope="module")
def waiting(stack, tiny_base) -> dict[str, str]:
    """Three finetune deployment runs started at once (model -> flow run id)."""
    runs = {}
    for model, timeout in TIMEOUTS.items():
        config = tiny_config(tiny_base, 2)
        config["registry"] = {"model_name": model, "promote_metric": "eval_loss",
                              "approval": "required", "approval_timeout": timeout}  # fmt: skip
        params = json.dumps({"config": config})
        out = cli([str(BIN / "prefect"), "deployment", "run", "finetune/finetune",
                   "--params", params], stack.env, stack.project)  # fmt: skip
        runs[model] = re.search(r"UUID: ([0-9a-f-]{36})", out)[1]
    return runs


def mlflow_client(stack):
    from mlflow import MlflowClient

    uri = stack.mlflow_uri.replace("://", f"://svc-loraflow:{stack.passwords['svc-loraflow']}@")
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def version_tags(stack, model: str) -> dict[str, str]:
    return dict(mlflow_client(stack).get_model_version(model, "1").tags)


def aliases(stack, model: str) -> dict[str, str]:
    return {k: str(v) for k, v in mlflow_client(stack).get_registered_model(model).aliases.items()}


def loraflow(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "loraflow"), *args], env=stack.env, cwd=stack.project,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def events(stack, model: str, ending: list[str]) -> list[str]:
    """The loraflow.* events of `model`'s versions in the order they occurred, read again (up to
    60 s) until they end with `ending`: the server stores an event after a short delay, so one
    emitted just before the flow run completed may not be readable yet."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    server = {PREFECT_API_URL: stack.prefect_api, PREFECT_API_AUTH_STRING: stack.auth_string}
    only = EventFilter(
        event=EventNameFilter(prefix=["loraflow."]),
        resource=EventResourceFilter(id=[f"loraflow.model.{model}"]),
    )
    deadline = time.monotonic() + 60
    with temporary_settings(updates=server), get_client(sync_client=True) as c:
        while True:
            page = c.read_events(filter=only, limit=50)
            shown = [e.event for e in sorted(page.events, key=lambda e: e.occurred)]
            if shown[-len(ending) :] == ending or time.monotonic() > deadline:
                return shown
            time.sleep(0.5)


def assert_pending(stack, model: str, flow_run_id: str) -> dict[str, str]:
    tags = version_tags(stack, model)
    assert tags["approval.status"] == "pending", tags
    assert tags["approval.flow_run"] == flow_run_id and tags["approval.by"] == ""
    assert tags["promotion.outcome"] == "awaiting approval", tags
    assert aliases(stack, model) == {"challenger": "1"}  # champion has not moved
    return tags


@contextlib.contextmanager
def on_stack(stack, monkeypatch):
    """This process as the pipeline's account on the stack (Prefect API and MLflow server)."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, stack.env[name])
    server = {PREFECT_API_URL: stack.prefect_api, PREFECT_API_AUTH_STRING: stack.auth_string}
    with temporary_settings(updates=server):
        yield


def test_fifty_data_events_in_ten_seconds_start_one_run(stack, waiting, monkeypatch):
    """prefect.yaml's finetune-on-data trigger: `loraflow notify` and 49 more events for the same
    source (spelled with and without its trailing slash) within 10 s give exactly one run,
    scheduled `schedule_after` later; a malformed source is refused in one line."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.events.filters import EventFilter, EventNameFilter

    from tasks.approval import notify_landed

    on_data = DeploymentFilter(name=DeploymentFilterName(any_=["finetune-on-data"]))
    sent = loraflow(stack, "notify", "s3://team-data/incoming/demo/")
    assert sent.returncode == 0, sent.stderr
    resource = "loraflow.data.s3://team-data/incoming/demo/"
    assert sent.stdout.strip() == f"loraflow.data.landed emitted for {resource}"
    with on_stack(stack, monkeypatch), get_client(sync_client=True) as prefect_client:
        post_event(stack, resource)  # as docs/team.md's curl does, without loraflow
        for i in range(48):
            assert notify_landed("s3://team-data/incoming/demo" + "/" * (i % 2)) == resource
            time.sleep(0.1)
        with pytest.raises(LoraflowError, match=r"^notify: expected s3://bucket/prefix/"):
            notify_landed("s3:///no-bucket")
        landed = EventFilter(event=EventNameFilter(name=["loraflow.data.landed"]))
        deadline = time.monotonic() + 120
        while len(prefect_client.read_events(filter=landed, limit=50).events) < 50:
            assert time.monotonic() < deadline, "the server did not store the 50 events"
            time.sleep(1)
        while not (runs := prefect_client.read_flow_runs(deployment_filter=on_data)):
            assert time.monotonic() < deadline, "the trigger started no run"
            time.sleep(1)
        time.sleep(3)  # the triggers service has seen every event: still one run
        runs = prefect_client.read_flow_runs(deployment_filter=on_data)
        assert [r.state.type.value for r in runs] == ["SCHEDULED"], runs
        assert (runs[0].expected_start_time - runs[0].created).total_seconds() > 500
        prefect_client.delete_flow_run(runs[0].id)  # nothing of it runs during the tests


def post_event(stack, resource: str) -> None:
    """POST one loraflow.data.landed to the server's REST API (`/api/events`)."""
    event = {"event": "loraflow.data.landed", "id": str(uuid.uuid4()), "payload": {},
             "occurred": datetime.now(UTC).isoformat(),
             "resource": {"prefect.resource.id": resource}}  # fmt: skip
    request = urllib.request.Request(
        f"{stack.prefect_api}/events", data=json.dumps([event]).encode(), method="POST",
        headers={"Content-Type": "application/json",
                 "Authorization": "Basic " + base64.b64encode(stack.auth_string.encode()).decode()},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 204


def test_reject_from_the_command_line_and_bad_answers(stack, waiting, monkeypatch):
    from tasks.approval import answer_signoff

    flow_run_id = waiting[CLI]
    wait_state(stack, flow_run_id, {"PAUSED"})
    before = assert_pending(stack, CLI, flow_run_id)

    # Bad answers: one line each (the command prints it and exits 2), nothing changed.
    with on_stack(stack, monkeypatch):
        for model, version, by, line in (
            ("no-such-model", "1", "x", "registered model 'no-such-model' does not exist"),
            (CLI, "7", "x", f"model '{CLI}' has no version 7"),
            (CLI, "v1", "x", "version must be a number (got 'v1')"),
            (CLI, "1", " ", "--by must name the reviewer (recorded as approval.by)"),
        ):
            with pytest.raises(LoraflowError) as refused:
                answer_signoff(model_name=model, version=version, decision="approve", by=by,
                               comment="")  # fmt: skip
            assert str(refused.value) == line
    assert version_tags(stack, CLI) == before and state_of(stack, flow_run_id) == "PAUSED"

    answered = loraflow(stack, "reject", CLI, "1", "--by", "carol", "--comment", "too terse")
    assert answered.returncode == 0, answered.stderr
    assert f"{CLI} v1: approval.status rejected (flow run {flow_run_id})" in answered.stdout
    assert wait_state(stack, flow_run_id, {"COMPLETED"})["state"] == "COMPLETED"
    tags = version_tags(stack, CLI)
    assert {k: tags[k] for k in ("approval.status", "approval.by", "approval.comment")} == {
        "approval.status": "rejected", "approval.by": "carol", "approval.comment": "too terse"
    }  # fmt: skip
    assert tags["approval.flow_run"] == flow_run_id and tags["approval.at"].endswith("Z")
    assert tags["promotion.outcome"] == "not promoted (rejected)", tags
    assert aliases(stack, CLI) == {"challenger": "1"}

    # Answering again (approve after the reject): refused in one line, the registry unchanged.
    again = loraflow(stack, "approve", CLI, "1", "--comment", "changed my mind")
    assert again.returncode == 2
    assert (
        again.stderr.startswith(
            f"loraflow: error: {CLI} v1 is not pending: approval.status is rejected (by carol at "
        )
        and len(again.stderr.strip().splitlines()) == 1
    ), again.stderr
    assert version_tags(stack, CLI) == tags and aliases(stack, CLI) == {"challenger": "1"}
    ending = ["loraflow.promotion.pending", "loraflow.promotion.rejected"]
    shown = events(stack, CLI, ending)
    assert shown[-2:] == ending, shown
    assert "loraflow.model.promoted" not in shown


def test_no_answer_expires_and_the_run_completes(stack, waiting, monkeypatch):
    from tasks.approval import answer_signoff

    flow_run_id = waiting[LATE]
    record = wait_state(stack, flow_run_id, {"COMPLETED"})
    assert record["state"] == "COMPLETED", record  # a decision, not a failure
    tags = version_tags(stack, LATE)
    assert tags["approval.status"] == "expired" and tags["approval.by"] == "nobody (timed out)"
    assert f"({TIMEOUTS[LATE]} s)" in tags["approval.comment"], tags
    assert tags["promotion.outcome"] == "not promoted (expired)"
    assert aliases(stack, LATE) == {"challenger": "1"}
    with on_stack(stack, monkeypatch), pytest.raises(LoraflowError, match="is expired"):
        answer_signoff(model_name=LATE, version="1", decision="approve", by="x", comment="")
    assert version_tags(stack, LATE) == tags
    ending = ["loraflow.promotion.pending", "loraflow.promotion.expired"]
    shown = events(stack, LATE, ending)
    assert shown[-2:] == ending, shown


def test_approve_in_the_prefect_ui(stack, waiting):
    """A reviewer logs in to the Prefect UI, opens the paused run, reads the figures in the
    form's description, picks approve, types a comment and a name, and submits: the version
    becomes champion with the approval tags. Nothing fails in the browser on the way (no
    request, console or page error) but what BEFORE_LOGIN and TAB_ICONS name. The screenshot is
    docs/images/signoff-form.png (written there with LORAFLOW_SCREENSHOTS=1, else beside the
    stack's logs)."""
    from playwright.sync_api import expect

    require_chromium()
    flow_run_id = waiting[UI]
    wait_state(stack, flow_run_id, {"PAUSED"})
    assert_pending(stack, UI, flow_run_id)
    metrics = mlflow_client(stack).get_run(version_run(stack, UI)).data.metrics
    figures = [f"{metrics[f'{m}_eval_loss']:.4f}" for m in ("base", "adapter")]
    origin = stack.prefect_api.removesuffix("/api")
    with browser_page(height=1100) as page:
        failures = PageFailures(page)
        with page.expect_response(f"{origin}/api/admin/version") as probe:
            page.goto(f"{origin}/login?redirect=/runs/flow-run/{flow_run_id}")
        assert probe.value.status == 401  # BEFORE_LOGIN: if this changes, so do it and the docs
        assert unexpected(failures.take(), origin, BEFORE_LOGIN | TAB_ICONS) == []
        password = page.locator("input")
        password.fill(stack.auth_string)
        password.press("Enter")
        resume = page.get_by_role("button", name="Resume").first
        resume.wait_for()
        # The toast the refused probe raised (BEFORE_LOGIN), closed as the reviewer would: the
        # UI draws it twice, stacked (two toast containers); closing the top one closes both.
        oops = page.locator(".p-toast__card", has_text="Oops. Something went wrong.")
        oops.last.locator(".p-toast__close-btn").click()
        expect(page.locator(".p-toast__card")).to_have_count(0)  # gone, and no other toast
        resume.click()
        form = page.get_by_role("dialog")
        form.get_by_text("Figures on the eval split").wait_for()
        row = form.get_by_role("row").filter(has_text="eval_loss").first
        assert row.inner_text().split() == ["eval_loss", *figures]
        assert "The first 3 eval examples" in form.inner_text()
        field(form, "Comment").locator("textarea").fill("looks right on the examples")
        field(form, "Reviewer").locator("textarea").fill("alice")
        field(form, "Decision").locator("button").last.click()
        approve = page.get_by_role("option", name="approve")
        if not approve.is_visible():  # the list opens on the first key press on some loads
            page.keyboard.press("ArrowDown")
        approve.click()
        assert page.locator(".p-toast__card").count() == 0  # no toast came up since
        assert unexpected(failures.take(), origin, TAB_ICONS) == []
        shot = (
            SCREENSHOT if os.environ.get("LORAFLOW_SCREENSHOTS") else stack.root / SCREENSHOT.name
        )
        page.screenshot(path=str(shot))
        form.get_by_role("button", name="Submit").click()
        form.wait_for(state="hidden")
        assert unexpected(failures.take(), origin, TAB_ICONS) == []
    record = wait_state(stack, flow_run_id, {"COMPLETED"})
    assert record["state"] == "COMPLETED", record
    tags = version_tags(stack, UI)
    assert tags["approval.status"] == "approved" and tags["approval.by"] == "alice", tags
    assert tags["approval.comment"] == "looks right on the examples"
    assert tags["promotion.outcome"] == "promoted", tags
    assert aliases(stack, UI) == {"challenger": "1", "champion": "1"}
    ending = ["loraflow.promotion.pending", "loraflow.promotion.approved"]
    ending.append("loraflow.model.promoted")
    shown = events(stack, UI, ending)
    assert shown[-3:] == ending, shown


def unexpected(failures: list[str], origin: str, allowed: dict[str, str]) -> list[str]:
    """The failures (tests.browser.PageFailures lines) not in `allowed` (keyed with our server's
    origin left out; a failure at another host keeps its whole URL and is never allowed)."""
    return [line for line in failures if line.replace(f" {origin}/", " /", 1) not in allowed]


def field(form, label: str):
    """A field of the form Prefect renders from ReviewForm's schema, by its label."""
    name = form.page.locator(".schema-form-property__label", has_text=re.compile(f"^{label}"))
    return form.locator(".p-label.schema-form-property").filter(has=name)


def version_run(stack, model: str) -> str:
    return mlflow_client(stack).get_model_version(model, "1").run_id
