"""A temporary Prefect API for one CLI process, started early so it comes up while other work runs.

Without PREFECT_API_URL, Prefect starts its temporary server (`SubprocessASGIServer`) the first
time a client needs one, and waits for it. Class and caller live in
`prefect.server.api.server`, whose import alone (FastAPI, SQLAlchemy, docket, the whole API) costs
the client process seconds it never uses. This starts the same server, the same way (uvicorn,
`create_app` as a factory, ephemeral mode, no UI), without that import, and returns at once: the
server starts on the other core while the CLI checks its inputs, and `wait` joins it when a flow
run is about to start. Inside `api.settings()` the process's Prefect clients talk to it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

from models.errors import LoraflowError


class PrefectApiError(LoraflowError):
    """The temporary Prefect API did not come up."""


@contextlib.contextmanager
def prefect_api() -> Iterator[Callable[[], None]]:
    """Around a command's flows: where no Prefect API is set, they use a temporary one started
    now, which comes up while the command imports and checks. Yields the call that waits for it
    (call it before the first flow)."""
    api = _early.pop() if _early else start_temporary_api()
    if api is None:
        yield lambda: None
        return
    with api.settings():
        yield api.wait


_early: list[TemporaryApi | None] = []


def start_early() -> None:
    """Spawn the API the next `prefect_api()` block uses, before the command's own imports (the
    command line calls this first thing for `loraflow run`)."""
    if not _early:
        _early.append(start_temporary_api())


def start_temporary_api() -> TemporaryApi | None:
    """The temporary API this process's flows would otherwise start themselves, spawned now;
    None where an API is set (PREFECT_API_URL in the environment, a profile or prefect.toml) or
    ephemeral mode is off: then Prefect does as it is told.

    Spawned before Prefect is imported here (its settings cost a second), so the server gets
    that second too; where Prefect's settings then name an API, it is stopped unused.
    """
    if os.environ.get("PREFECT_API_URL") or ("prefect.settings" in sys.modules and _api_set()):
        return None  # (already imported, e.g. under a test harness: asked first, for free)
    api = TemporaryApi()
    if _api_set():
        api.stop()
        return None
    return api


def _api_set() -> bool:
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    return bool(settings.api.url) or not settings.server.ephemeral.enabled


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TemporaryApi:
    """A Prefect API server in a child process, stopped when this process exits."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.ready = False
        self.process = self._spawn()
        atexit.register(self.stop)  # before Prefect's log and event workers: they drain first

    def _spawn(self) -> subprocess.Popen:
        # Prefect's own spawn adds the settings set in code; none are before a flow runs, and
        # the server reads profiles and prefect.toml as this process would.
        env = {
            **os.environ,
            # As Prefect's own temporary server: API only, no background services.
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
        }
        # Prefect's server app under uvicorn, as `uvicorn --factory ...:create_app` would serve it,
        # with the import made cheaper (tasks.lib.prefect_api_server).
        cmd = [sys.executable, "-m", "tasks.lib.prefect_api_server", str(self.port)]
        return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)

    def wait(self, timeout: float | None = None) -> None:
        """Block until the API answers its health check (within Prefect's startup timeout)."""
        if timeout is None:
            from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

            timeout = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
        deadline = time.monotonic() + timeout
        while not self.ready:
            if self.process.poll() is not None:
                raise PrefectApiError(
                    f"temporary Prefect API on port {self.port} exited with code "
                    f"{self.process.returncode} before answering"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                    self.ready = answer.status == 200
            except (urllib.error.URLError, OSError):
                pass
            if not self.ready:
                if time.monotonic() > deadline:
                    raise PrefectApiError(
                        f"temporary Prefect API on port {self.port} did not answer within "
                        f"{timeout:.0f} s (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)"
                    )
                time.sleep(0.05)

    @contextlib.contextmanager
    def settings(self) -> Iterator[None]:
        """Prefect clients made inside this block use this API; call `wait` before the first."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.url}):
            yield

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
