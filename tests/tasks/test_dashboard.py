"""Training progress on the flow run while it trains, read back from the Prefect API."""

import time

from prefect import flow


def read_progress(artifact_id: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId

    with get_client(sync_client=True) as prefect_client:
        found = prefect_client.read_artifacts(
            artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=[artifact_id]))
        )
    return found[0].data, found[0].description


def wait_progress(artifact_id: str, data: float, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while (seen := read_progress(artifact_id))[0] != data:
        assert time.monotonic() < deadline, f"progress stayed {seen}, expected {data}"
        time.sleep(0.1)
    return seen


def test_progress_and_latest_loss_show_while_training_and_reach_every_artifact(prefect_harness):
    from tasks.dashboard import TrainingProgress, start_progress

    @flow
    def pipeline() -> str:
        return start_progress("dispatched, waiting for a worker")

    @flow
    def training(elsewhere: str) -> None:
        progress = TrainingProgress(40, (elsewhere,), interval=0.0)
        own = progress.artifact_ids[-1]
        progress.log({"loss": 2.5, "learning_rate": 1e-3}, 10)
        # Shown while training goes on: on this run and on the pipeline's artifact.
        for artifact_id in (own, elsewhere):
            assert wait_progress(artifact_id, 25.0) == (25.0, "step 10/40 · loss 2.5000")
        progress.log({"loss": 1.25}, 30)
        progress.log({"train_runtime": 9.0}, 40)  # the Trainer's summary: no loss in it
        progress.close()
        for artifact_id in (own, elsewhere):
            assert read_progress(artifact_id) == (100.0, "step 40/40 · loss 1.2500")

    elsewhere = pipeline()
    assert read_progress(elsewhere) == (0.0, "dispatched, waiting for a worker")
    training(elsewhere)


def test_outside_a_flow_run_progress_goes_nowhere():
    from tasks.dashboard import TrainingProgress

    progress = TrainingProgress(10)
    progress.log({"loss": 1.0}, 5)
    progress.close()
    assert progress.artifact_ids == []
