"""What the benchmarks share: paths, worker processes, medians, the figure they report."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_BASE = ROOT / ".loraflow" / "demo-base"
DEMO_DATA = ROOT / "data"
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"
RESULT_PREFIX = "BENCH_RESULT "
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Workers run offline and quiet.
WORKER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
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


@dataclass
class Figure:
    """One row of the Performance table, plus the measurements behind it."""

    number: int
    name: str
    measured: str
    goal: str
    command: str
    details: dict = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)


def require_demo_assets() -> None:
    if not (DEMO_BASE / "config.json").is_file() or not (DEMO_DATA / "train.jsonl").is_file():
        raise BenchError(
            f"demo assets missing ({DEMO_BASE}, {DEMO_DATA}): run `loraflow demo-assets` "
            "(or `make demo-assets`) first"
        )


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


def median(values: list[float]) -> float:
    return statistics.median(values)


def device_kind() -> str:
    """'cuda' when a GPU is there (then the suite trains in bf16), else 'cpu'."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


QUIET = 0.10  # other processes' share of all CPUs below which a machine counts as quiet


def _cpu_seconds() -> tuple[float, float]:
    """(busy seconds of all CPUs since boot incl. steal, CPU seconds of this process and its
    waited-for children)."""
    ours = sum(
        getattr(resource.getrusage(who), field)
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for field in ("ru_utime", "ru_stime")
    )
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0.0, ours
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    busy = sum(fields[:3]) + sum(fields[5:8])
    return busy / os.sysconf("SC_CLK_TCK"), ours


class OtherLoad:
    """Share of all CPUs that other processes (and the hypervisor: steal) used while a block ran:
    `with OtherLoad() as load: ...; load.share`. Side-by-side ratios hold up to moderate load,
    but a shared machine moves them (README Performance), so the suite reports this per figure.
    Linux only (0.0 elsewhere)."""

    def __enter__(self) -> OtherLoad:
        self.share = 0.0
        self._start = (time.perf_counter(), *_cpu_seconds())
        return self

    def __exit__(self, *exc) -> None:
        wall0, busy0, ours0 = self._start
        busy1, ours1 = _cpu_seconds()
        wall = time.perf_counter() - wall0
        if busy0 and wall > 0:
            others = max(0.0, (busy1 - busy0) - (ours1 - ours0))
            self.share = min(1.0, others / (wall * (os.cpu_count() or 1)))

    @property
    def quiet(self) -> bool:
        return self.share < QUIET

    def describe(self) -> str:
        verdict = "quiet" if self.quiet else "BUSY: compare ratios from a quiet run"
        return f"other processes used {self.share:.0%} of the {os.cpu_count()} CPUs ({verdict})"


class StepClock:
    """Times every Trainer's training_step in this process from now on (the class is patched):
    `clock.reset()` before a training, `clock.step_seconds()` after it. A step's time runs from
    one training_step call to the next, i.e. the whole cycle: batch, forward, backward,
    optimizer, callbacks. Arms that see the same batches in the same order can then be compared
    step by step, which the host's occasional multi-second stalls (STACK-FACTS) disturb far
    less than whole-run times."""

    def __init__(self) -> None:
        from transformers import Trainer

        self._starts: list[float] = []
        original = Trainer.training_step

        def timed(trainer, *args, **kwargs):
            self._starts.append(time.perf_counter())
            return original(trainer, *args, **kwargs)

        Trainer.training_step = timed

    def reset(self) -> None:
        self._starts.clear()

    def step_seconds(self) -> list[float]:
        return [b - a for a, b in zip(self._starts[:-1], self._starts[1:], strict=True)]


def paired_step_ratios(baseline_runs: list[dict], candidate_runs: list[dict]) -> list[float]:
    """baseline / candidate time of step i of paired runs (their "step_seconds"), for every step
    of every pair: the candidate's speed-up on each batch."""
    return [
        b / c
        for base, cand in zip(baseline_runs, candidate_runs, strict=True)
        for b, c in zip(base["step_seconds"], cand["step_seconds"], strict=True)
    ]


def train_lora(out, *, steps: int, seed: int = 0, **options):
    """The pipeline's train_adapter on the demo task: LoRA r=8 on all linear layers, the demo
    config's data settings, learning rate and batch; `options` override any of its arguments."""
    from models.methods import AdapterSpec
    from models.train import train_adapter

    args = {
        "base_model": str(DEMO_BASE),
        "train_file": DEMO_DATA / "train.jsonl",
        "prompt_field": "prompt",
        "completion_field": "completion",
        "max_seq_len": 64,
        "too_long": "reject",
        "method": "lora",
        "spec": AdapterSpec(r=8, alpha=16.0, dropout=0.0, target_modules=TARGETS, seed=seed),
        "max_steps": steps,
        "learning_rate": 3e-3,
        "batch_size": 16,
        "device": "cpu",
        "output_dir": out,
    }
    return train_adapter(**{**args, **options})
