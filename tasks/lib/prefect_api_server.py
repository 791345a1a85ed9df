"""The temporary Prefect API's process: Prefect's server app under uvicorn, started faster.

`python -m tasks.lib.prefect_api_server PORT` serves what `uvicorn --factory
prefect.server.api.server:create_app` serves (tasks.lib.prefect_api sets the same environment
Prefect sets for its own temporary server), with Python's cyclic garbage collector off while the
server's modules are imported and its app is built. Those imports create millions of objects
that all live until the process ends, and the collector, triggered by allocation counts, scans
them again and again for cycles that are not there: with it off the import and app build took
3.3-4.0 s of CPU instead of 4.9-5.4 s (AMD EPYC, 2 cores; docs/performance.md row 5). Then the
objects made so far are moved out of the collector's view (gc.freeze) and it is turned back on,
so requests are served with the collector working as usual.
"""

from __future__ import annotations

import gc
import sys


def serve(port: int) -> None:
    gc.disable()
    import uvicorn
    from prefect.server.api.server import create_app

    app = create_app()
    gc.freeze()
    gc.enable()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", lifespan="on")


if __name__ == "__main__":
    serve(int(sys.argv[1]))
