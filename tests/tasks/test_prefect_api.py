"""The temporary Prefect API a command starts early: it answers, flows use it, it stops."""

import urllib.request

from prefect.settings import PREFECT_API_URL, temporary_settings

from tasks.lib.prefect_api import TemporaryApi, start_temporary_api


def test_an_api_that_is_set_is_used_as_is(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert start_temporary_api() is None
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    assert start_temporary_api() is None


def test_the_temporary_api_answers_serves_a_flow_and_stops(tmp_path, monkeypatch):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))

    @flow(name="temporary-api-probe")
    def probe() -> int:
        return 7

    api = TemporaryApi()
    try:
        with api.settings():
            api.wait()
            with urllib.request.urlopen(f"{api.url}/health") as answer:
                assert answer.status == 200
            assert probe() == 7
            with get_client(sync_client=True) as prefect_client:
                assert prefect_client.api_url.port == api.port
                assert len(prefect_client.read_flow_runs()) == 1  # a fresh database
            # As the CLI does at exit (and Prefect's test harness before it stops its server):
            # the process-wide log and event workers drain into this API before it goes, else
            # they would keep this API's address and retry into it for later tests.
            EventsWorker.drain_all()
            APILogWorker.drain_all()
    finally:
        api.stop()
    assert api.process.poll() is not None
    assert (tmp_path / "prefect" / "prefect.db").is_file()  # its state went to PREFECT_HOME
