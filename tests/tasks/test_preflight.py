"""The checks every flow runs first; the service check's policy: once, no retries."""

import boto3
import pytest

from tests.conftest import free_port


def test_the_service_check_runs_once_without_retries(monkeypatch, prefect_harness):
    """A tracking server refusing connections at the start is reported at once: one attempt,
    although the error is retryable (the I/O tasks would wait it out during a run)."""
    import tasks.preflight
    from tasks.preflight import check_services
    from tasks.runtime import IO_RETRIES
    from tasks.tracking import TrackingError, open_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    attempts = []
    real_check = tasks.preflight.check_reachable

    def counted_check():  # the real check, counted (the engine would call it again on a retry)
        attempts.append(1)
        real_check()

    monkeypatch.setattr(tasks.preflight, "check_reachable", counted_check)
    state = check_services(return_state=True)
    assert state.is_failed()
    assert len(attempts) == 1
    with pytest.raises(TrackingError, match=r"is unreachable \(connection refused\)$") as err:
        state.result()
    assert err.value.retryable
    assert open_run.retries == IO_RETRIES["retries"] > 0  # the same error during a run: retried


def test_the_service_check_passes_and_names_a_missing_bucket(s3_env, project):
    from tasks.lib.s3 import S3Error
    from tasks.preflight import check_services

    boto3.client("s3").create_bucket(Bucket="present-q7")
    assert check_services.fn(export_to="s3://present-q7/exports") is None
    assert check_services.fn() is None  # the embedded sqlite store: nothing to ping
    with pytest.raises(S3Error, match=r"^s3://absent-q7: bucket does not exist at http") as err:
        check_services.fn(export_to="s3://absent-q7/exports")
    assert not err.value.retryable
