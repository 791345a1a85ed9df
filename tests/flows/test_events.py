"""Events a team wires automations to, on the real Prefect server of the test harness (its event
persister, triggers and actions run as on any server)."""

import time

from tests.conftest import REPO
from tests.flows.test_promote import registered


def wait_for(read, what: str, timeout: float = 60.0):
    """read() until it returns something truthy (events and automations are asynchronous)."""
    deadline = time.monotonic() + timeout
    while not (found := read()):
        assert time.monotonic() < deadline, f"no {what} within {timeout:g} s"
        time.sleep(0.5)
    return found


def loraflow_events(prefect_client, model_name: str) -> list:
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    page = prefect_client.read_events(
        filter=EventFilter(
            event=EventNameFilter(prefix=["loraflow."]),
            resource=EventResourceFilter(id=[f"loraflow.model.{model_name}"]),
        ),
        limit=50,  # the client's default (100) is over the server's maximum
    )
    return sorted(page.events, key=lambda e: e.occurred)


def export_on_promotion(prefect_client, model_name: str):
    """What a team sets up in the UI: on loraflow.model.promoted of `model_name`, run the export
    deployment with the promoted version's URI. Returns the deployment's id."""
    from prefect.automations import AutomationCore
    from prefect.events.actions import RunDeployment
    from prefect.events.schemas.automations import EventTrigger, Posture

    flow_id = prefect_client.create_flow_from_name("export")
    deployment_id = prefect_client.create_deployment(flow_id=flow_id, name=f"on-{model_name}")
    prefect_client.create_automation(
        AutomationCore(
            name=f"export {model_name} champions",
            trigger=EventTrigger(
                expect={"loraflow.model.promoted"},
                match={"loraflow.model.name": model_name},
                posture=Posture.Reactive,
                threshold=1,
            ),
            actions=[
                RunDeployment(
                    deployment_id=deployment_id,
                    parameters={
                        "model_uri": "{{ event.resource['loraflow.model.uri'] }}",
                        "export": {"enabled": True, "to": "s3://exports/team"},
                    },
                )
            ],
        )
    )
    return deployment_id


def test_promotions_emit_events_and_an_automation_runs_the_export(project, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from flows.promote import promote_version

    with get_client(sync_client=True) as prefect_client:
        deployment_id = export_on_promotion(prefect_client, "evt")
        registered("evt", 0.5, 0.7, champion="1", challenger="2")
        time.sleep(1)  # the server loads a new automation in a task just after its commit
        assert promote_version(model_name="evt").moves_champion  # v2 promoted
        assert not promote_version(model_name="evt", version="1").promote  # v1 kept out

        events = wait_for(
            lambda: (found := loraflow_events(prefect_client, "evt")) and len(found) >= 2 and found,
            "loraflow events",
        )
        promoted, kept = events
        assert promoted.event == "loraflow.model.promoted"
        labels = dict(promoted.resource)
        assert labels["loraflow.model.version"] == "2"
        assert labels["loraflow.model.uri"] == "models:/evt/2"
        assert labels["loraflow.metric.exact_match"] == "0.7"
        assert labels["loraflow.promotion.outcome"] == "promoted"
        assert labels["loraflow.champion.version"] == "1"
        assert "flow-run" in {r.get("prefect.resource.role") for r in promoted.related}
        assert kept.event == "loraflow.model.not-promoted"
        assert dict(kept.resource)["loraflow.promotion.outcome"] == "kept champion v2"
        assert "not better" in kept.payload["reason"]

        # The automation fired on the promotion (not on the kept one): one export run, for v2.
        runs = wait_for(
            lambda: prefect_client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            ),
            "flow run of the export deployment",
        )
        assert [r.parameters["model_uri"] for r in runs] == ["models:/evt/2"]


def test_a_failed_run_emits_an_event_naming_the_model(project, prefect_harness):
    import pytest
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    from flows.finetune import finetune
    from models.config.run import config_from_dict

    config = config_from_dict(
        {
            "base_model": str(REPO / "demo" / "base"),
            "data": {"path": "no-such-data"},
            "registry": {"model_name": "failing"},
        }
    )
    with pytest.raises(Exception, match="no-such-data"):
        finetune(config)
    with get_client(sync_client=True) as prefect_client:
        name = EventNameFilter(name=["loraflow.run.failed"])
        events = wait_for(
            lambda: [
                e
                for e in prefect_client.read_events(filter=EventFilter(event=name), limit=50).events
                if dict(e.resource).get("loraflow.model.name") == "failing"
            ],
            "loraflow.run.failed event",
        )
    assert dict(events[0].resource)["loraflow.run.state"] == "FAILED"
    assert "no-such-data" in events[0].payload["message"]
