"""Trial 9 (not in the default suite; `python -m bench --only compile`): torch.compile on the
demo config.

Each arm is a fresh process training LoRA on the demo config with bench/plain.py's plain
transformers Trainer + PEFT script (padded batches), once eager and once with
`TrainingArguments(torch_compile=True)` (TorchInductor; on CPU it compiles C++ with the
system compiler). The compiled arm runs twice on one fresh Inductor cache directory: cold (a
first run on a machine) and warm (a later run of the same shapes, e.g. the next nightly
retrain on the same worker). Measured from per-step timestamps: the time to the end of the
first step (where compilation happens), the steady ms/step after `warm` steps (recompilations
for new batch shapes happen before that), and the number of steps after which the compiled run
has caught up with the eager one. The same seed gives every arm the same batches; their
training losses are printed side by side.
"""

from __future__ import annotations

import tempfile
import time

from bench.assets import lora_spec, require_demo_assets
from bench.measure import Figure
from bench.workers import run_worker, worker_main


def _work(compiled: bool, steps: int, warm: int, tmp: str) -> dict:
    import torch
    from transformers import TrainerCallback

    from bench.plain import train_plain

    stamps: dict[int, float] = {}

    class _Stamps(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            stamps[0] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            stamps[state.global_step] = time.perf_counter()

    got = train_plain(
        lora_spec(steps=steps, warmup_steps=20, logging_steps=steps),
        output_dir=f"{tmp}/trainer-{compiled}",
        torch_compile=compiled,
        callbacks=[_Stamps()],
    )
    return {
        "first_step_seconds": stamps[1] - stamps[0],
        "steady_ms_per_step": 1000 * (stamps[steps] - stamps[warm]) / (steps - warm),
        "total_seconds": stamps[steps] - stamps[0],
        "train_loss": got["train_loss"],
    }


def run(*, steps: int = 200, warm: int = 40) -> Figure:
    require_demo_assets()
    arms = {}
    with tempfile.TemporaryDirectory(prefix="bench-compile-") as tmp:
        cache = {"TORCHINDUCTOR_CACHE_DIR": f"{tmp}/inductor-cache"}
        for arm, compiled in (("eager", False), ("cold", True), ("warm", True)):
            arms[arm] = run_worker(
                "bench.compile",
                {"compiled": compiled, "steps": steps, "warm": warm, "tmp": tmp},
                env=cache,
            )
    eager = arms["eager"]

    def break_even(arm: dict) -> float:
        saved = eager["steady_ms_per_step"] - arm["steady_ms_per_step"]
        extra = arm["first_step_seconds"] - eager["first_step_seconds"]
        return extra * 1000 / saved if saved > 0 else float("inf")

    speedup = eager["steady_ms_per_step"] / arms["cold"]["steady_ms_per_step"]
    even = {arm: break_even(arms[arm]) for arm in ("cold", "warm")}
    lines = [
        f"demo config, batch 16, padded, {steps} steps, steady = steps {warm}-{steps}, a fresh "
        "process per arm, one fresh Inductor cache for both compiled arms"
    ]
    for arm in ("eager", "cold", "warm"):
        got = arms[arm]
        lines.append(
            f"{arm:5}: first step {got['first_step_seconds']:5.1f} s, steady "
            f"{got['steady_ms_per_step']:.1f} ms/step, {steps} steps in "
            f"{got['total_seconds']:.1f} s, loss {got['train_loss']:.5f}"
        )
    lines.append(
        f"steady speedup {speedup:.2f}x; breaks even after ~{even['cold']:,.0f} steps with a cold "
        f"cache, ~{even['warm']:,.0f} with a warm one"
    )
    return Figure(
        number=9,
        name="trial: torch.compile (inductor) vs eager, demo config, plain Trainer + PEFT",
        measured=(
            f"steady {speedup:.2f}x ({arms['cold']['steady_ms_per_step']:.1f} vs "
            f"{eager['steady_ms_per_step']:.1f} ms/step); first step "
            f"{eager['first_step_seconds']:.1f} s eager, "
            f"{arms['cold']['first_step_seconds']:.1f} s cold cache, "
            f"{arms['warm']['first_step_seconds']:.1f} s warm; breaks even after "
            f"~{even['cold']:,.0f} / ~{even['warm']:,.0f} steps"
        ),
        goal="keep only if it pays",
        command="python -m bench --only compile",
        details={"arms": arms, "speedup": speedup, "break_even_steps": even},
        lines=lines,
    )


if __name__ == "__main__":
    worker_main(_work)
