"""tasks.retrain_check: the skip is recorded once per flow run, also when its task is retried."""

import time


def test_a_retried_skip_record_writes_its_artifact_and_event_once(
    project, prefect_harness, monkeypatch
):
    """record-skip retried after a partial write (artifact written, then a failure) leaves one
    artifact and one event on the flow run."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    import tasks.retrain_check as retrain_check
    from tasks.registry import VersionRef
    from tests.flows.test_events import loraflow_events, wait_for
    from tests.flows.test_finetune import flow_run_artifacts

    monkeypatch.setattr(retrain_check.record_skip, "retry_delay_seconds", [0.1, 0.1, 0.1])
    real, calls = retrain_check.announce_skip, []

    def flaky(*args, **kwargs):
        real(*args, **kwargs)  # sent, then the answer is lost
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("connection reset")

    monkeypatch.setattr(retrain_check, "announce_skip", flaky)
    champion = VersionRef("retried", "3", "r1", "b", "", {}, {})
    inputs = {"data_md5": "d", "config_sha256": "c", "base_model_sha256": "b"}

    @flow(name="finetune-skip-retried")
    def skip_once():
        retrain_check.record_skip(model_name="retried", champion=champion, inputs=inputs)
        return flow_run.id

    run_id = skip_once()
    assert len(calls) == 2  # the task ran twice
    artifacts = flow_run_artifacts(run_id)
    assert artifacts["retrain-check"] and _artifact_count(run_id) == 1
    with get_client(sync_client=True) as prefect_client:
        wait_for(lambda: loraflow_events(prefect_client, "retried"), "skip event")
        time.sleep(2)  # the second send has arrived by now: it was not stored again
        events = loraflow_events(prefect_client, "retried")
    assert [e.event for e in events] == ["loraflow.model.skipped"]


def _artifact_count(run_id) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as prefect_client:
        return len(
            prefect_client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
            )
        )
