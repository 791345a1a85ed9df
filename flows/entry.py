"""The `loraflow` command: flows.cli.main, then an exit that skips the interpreter's teardown.

Once a command has returned and every exit handler has run (Prefect's log and event workers have
drained, the temporary Prefect API has stopped), what is left of a normal exit is the interpreter
freeing the ~10,000 modules this stack imports: 0.6 s on 2 cores (AMD EPYC), a tenth of an
unchanged nightly rerun. The handler registered here first, so run last, flushes stdout and
stderr and ends the process with the command's status instead. Only for the command line: code
that calls flows.cli.main in-process (tests, notebooks) exits as usual.
"""

from __future__ import annotations

import atexit
import os
import sys

_status: list[int] = []


def _exit_now() -> None:
    if not _status:
        return  # the command raised: let Python report and exit as usual
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(_status[0])


atexit.register(_exit_now)  # before flows.cli's imports register theirs: runs after them


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv)[:1] == ["run"]:
        # The temporary Prefect API `run` waits for, spawned before the command's own imports
        # (in the environment flows.cli.main sets: no telemetry).
        from tasks.lib.environment import quiet_environ
        from tasks.lib.prefect_api import start_early

        quiet_environ()
        start_early()
    from flows.cli import main as command

    status = command(argv)
    _status.append(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
