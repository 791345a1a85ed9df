"""Benchmark workers: each measurement runs in a fresh process that reports one JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tasks.lib.environment import QUIET_ENV

ROOT = Path(__file__).resolve().parents[1]

RESULT_PREFIX = "BENCH_RESULT "

# Workers run offline and quiet.
WORKER_ENV = {
    **QUIET_ENV,
    "HF_HUB_OFFLINE": "1",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "TRANSFORMERS_VERBOSITY": "error",
    "PYTHONWARNINGS": "ignore",
}

# Only for workers that measure memory: glibc returns freed memory at once, so that peak resident
# memory measures what training holds, not what the allocator kept. It makes every allocation
# over 64 KiB an mmap + munmap (page faults each time): the demo model trains about 2x slower
# under it, so speed benchmarks run without it.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


class BenchError(RuntimeError):
    """A benchmark could not run (missing demo assets, a worker failed)."""


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **WORKER_ENV, **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return env


def run_worker(
    module: str, request: dict, *, env: dict[str, str] | None = None, timeout: float = 900
) -> dict:
    """Run `python -m module REQUEST_JSON` in a fresh process; return the JSON it reports."""
    proc = subprocess.run(
        [sys.executable, "-m", module, json.dumps(request)],
        cwd=ROOT,
        env=worker_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
    raise BenchError(f"worker {module} failed (exit code {proc.returncode}):\n{tail}")


def worker_main(fn) -> None:
    """Entry point of a worker module: fn(**request) -> JSON-ready dict, printed for the parent."""
    request = json.loads(sys.argv[1])
    result = fn(**request)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def device_kind() -> str:
    """'cuda' when a GPU is there (then the suite trains in bf16), else 'cpu'."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
