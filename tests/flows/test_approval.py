"""Sign-off before promotion (registry.approval: required) on a real team stack, as a reviewer
does it: the Prefect UI in headless chromium, `loraflow approve|reject`, and no answer at all.

One stack for the module (bench.team_stack, Prefect's UI on): three finetune runs start at
once, each for its own model so their versions are v1 each; they pause after registration.
One is approved in the browser, one rejected from the command line, one left to expire.
The data trigger (prefect.yaml's finetune-on-data) is tested on the same server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from bench.team_stack import BIN, TeamStack, cli
from tests.browser import browser_page, require_chromium
from tests.conftest import REPO
from tests.flows.test_team import flow_run_record, postgres_or_skip, tiny_config

pytestmark = pytest.mark.slow

UI, CLI, LATE = "signoff-ui", "signoff-cli", "signoff-late"
TIMEOUTS = {UI: 1800, CLI: 1800, LATE: 15}  # registry.approval_timeout, seconds
SCREENSHOT = REPO / "docs" / "images" / "signoff-form.png"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, project_template, tiny_base):
    postgres_or_skip().close()
    root = tmp_path_factory.mktemp("signoff")
    project = root / "project"
    shutil.copytree(project_template, project, symlinks=True)
    for part in ("flows", "tasks", "models", "configs"):
        shutil.copytree(REPO / part, project / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("prefect.yaml", "loraflow_deploy.py"):
        shutil.copy(REPO / name, project / name)
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
        out = cli([str(BIN / "prefect"), "deployment", "run", "finetune/finetune",
                   "--params", json.dumps({"config": config})], stack.env, stack.project)  # fmt: skip
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


def events(stack, model: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    server = {PREFECT_API_URL: stack.prefect_api, PREFECT_API_AUTH_STRING: stack.auth_string}
    with temporary_settings(updates=server), get_client(sync_client=True) as c:
        page = c.read_events(
            filter=EventFilter(
                event=EventNameFilter(prefix=["loraflow."]),
                resource=EventResourceFilter(id=[f"loraflow.model.{model}"]),
            ),
            limit=50,
        )
    return [e.event for e in sorted(page.events, key=lambda e: e.occurred)]


def assert_pending(stack, model: str, flow_run_id: str) -> dict[str, str]:
    tags = version_tags(stack, model)
    assert tags["approval.status"] == "pending", tags
    assert tags["approval.flow_run"] == flow_run_id and tags["approval.by"] == ""
    assert tags["promotion.outcome"] == "awaiting approval", tags
    assert aliases(stack, model) == {"challenger": "1"}  # champion has not moved
    return tags


def test_reject_from_the_command_line_and_bad_answers(stack, waiting):
    flow_run_id = waiting[CLI]
    wait_state(stack, flow_run_id, {"PAUSED"})
    before = assert_pending(stack, CLI, flow_run_id)

    # Bad answers: one line each, exit 2, nothing changed.
    for args, line in (
        (("approve", "no-such-model", "1"), "registered model 'no-such-model' does not exist"),
        (("approve", CLI, "7"), f"model '{CLI}' has no version 7"),
        (("approve", CLI, "1", "--by", " "), "--by must name the reviewer"),
    ):
        refused = loraflow(stack, *args)
        assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
        assert refused.stderr.strip() == f"loraflow: error: {line}", refused.stderr
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

    # Answering again (approve after the reject): refused, the registry unchanged.
    again = loraflow(stack, "approve", CLI, "1", "--comment", "changed my mind")
    assert again.returncode == 2
    assert f"{CLI} v1 is not pending: approval.status is rejected (by carol" in again.stderr
    assert version_tags(stack, CLI) == tags and aliases(stack, CLI) == {"challenger": "1"}
    shown = events(stack, CLI)
    assert "loraflow.promotion.pending" in shown and "loraflow.promotion.rejected" in shown, shown
    assert "loraflow.model.promoted" not in shown


def test_no_answer_expires_and_the_run_completes(stack, waiting):
    flow_run_id = waiting[LATE]
    record = wait_state(stack, flow_run_id, {"COMPLETED"})
    assert record["state"] == "COMPLETED", record  # a decision, not a failure
    tags = version_tags(stack, LATE)
    assert tags["approval.status"] == "expired" and tags["approval.by"] == "nobody (timed out)"
    assert f"({TIMEOUTS[LATE]} s)" in tags["approval.comment"], tags
    assert tags["promotion.outcome"] == "not promoted (expired)"
    assert aliases(stack, LATE) == {"challenger": "1"}
    late = loraflow(stack, "approve", LATE, "1")
    assert late.returncode == 2 and "is not pending: approval.status is expired" in late.stderr
    shown = events(stack, LATE)
    assert shown[-2:] == ["loraflow.promotion.pending", "loraflow.promotion.expired"], shown


def test_approve_in_the_prefect_ui(stack, waiting):
    """A reviewer opens the paused run in the Prefect UI, reads the figures in the form's
    description, types a comment and approves: the version becomes champion."""
    require_chromium()
    flow_run_id = waiting[UI]
    wait_state(stack, flow_run_id, {"PAUSED"})
    assert_pending(stack, UI, flow_run_id)
    figure = f"{mlflow_client(stack).get_run(version_run(stack, UI)).data.metrics['adapter_eval_loss']:.4f}"
    origin = stack.prefect_api.removesuffix("/api")
    with browser_page() as page:
        page.goto(f"{origin}/runs/flow-run/{flow_run_id}")
        login(page, stack.auth_string)
        page.get_by_role("button", name=re.compile("Resume", re.I)).first.click()
        form = page.get_by_role("dialog")
        form.get_by_text("Figures on the eval split").wait_for()
        assert figure in form.inner_text()
        form.get_by_label(re.compile("comment", re.I)).fill("looks right on the examples")
        form.get_by_label(re.compile("reviewer", re.I)).fill("alice")
        pick(form, "approve")
        shot = Path(os.environ.get("LORAFLOW_SCREENSHOTS_DIR", stack.root)) / SCREENSHOT.name
        page.screenshot(path=str(shot))
        form.get_by_role("button", name=re.compile("Submit|Resume", re.I)).last.click()
    record = wait_state(stack, flow_run_id, {"COMPLETED"})
    assert record["state"] == "COMPLETED", record
    tags = version_tags(stack, UI)
    assert tags["approval.status"] == "approved" and tags["approval.by"] == "alice", tags
    assert tags["approval.comment"] == "looks right on the examples"
    assert tags["promotion.outcome"] == "promoted", tags
    assert aliases(stack, UI) == {"challenger": "1", "champion": "1"}
    shown = events(stack, UI)
    assert "loraflow.promotion.approved" in shown and "loraflow.model.promoted" in shown, shown


def version_run(stack, model: str) -> str:
    return mlflow_client(stack).get_model_version(model, "1").run_id


def login(page, auth_string: str) -> None:
    """The UI asks for the server's auth string once per browser (a password field)."""
    password = page.locator("input[type=password]")
    try:
        password.wait_for(timeout=15000)
    except Exception:  # noqa: BLE001 - no login asked for
        return
    password.fill(auth_string)
    password.press("Enter")


def pick(form, decision: str) -> None:
    """The decision field: a select or a combobox, whichever the UI renders."""
    select = form.locator("select")
    if select.count():
        select.first.select_option(decision)
        return
    form.get_by_role("combobox").first.click()
    form.page.get_by_role("option", name=decision).click()
