"""Figure 1: training tokens/s of the pipeline's train task vs a plain Trainer + PEFT script.

One worker process alternates the two on the demo config (same model, data, batch, seq length,
steps, seed, so the same batches in the same order): a short warm-up of each, then `reps` rounds
whose order flips every round. The pipeline side is the real train task (`tasks.train.train.fn`,
what the finetune flow calls), logging its loss curve to an MLflow run on a scratch sqlite store.

Two figures. Per step: both arms' Trainer steps are timed from one step's start to the next
(bench.clock.StepClock, the whole step cycle: batch, forward, backward, optimizer, callbacks);
step i of the pipeline and step i of the plain script in the same round see the same batch, so
their time ratio is the tokens/s ratio of that batch. The goal is judged on the median of these
paired ratios: this host stalls for seconds now and then (STACK-FACTS), which a median over
hundreds of step pairs shrugs off and a few whole-run ratios do not. Whole runs: tokens over
`trainer.train()`, so per-run costs (start, end) count too; reported as the median of the
per-round ratios.
"""

from __future__ import annotations

import tempfile

from bench.assets import DEMO_BASE, DEMO_CONFIG, DEMO_DATA, require_demo_assets
from bench.measure import Figure, median, paired_step_ratios
from bench.workers import run_worker, worker_main

GOAL = 0.97


def run_config(steps: int, output_dir: str, setup: dict):
    """The run config of `setup` ({config, base, data}: a config file, its base and data
    directories) for `steps` steps."""
    from models.config.file import load_config

    return load_config(
        setup["config"],
        [
            f"base_model={setup['base']}",
            f"data.path={setup['data']}",
            f"training.max_steps={steps}",
            f"training.output_dir={output_dir}",
        ],
    )


DEMO_SETUP = {"config": str(DEMO_CONFIG), "base": str(DEMO_BASE), "data": str(DEMO_DATA)}


def _pipeline(steps: int, tmp: str, tag: str, callbacks: list, setup: dict) -> dict:
    from tasks.tracking import open_run
    from tasks.train import train

    config = run_config(steps, f"{tmp}/runs", setup)
    run_id = open_run.fn(
        experiment="bench-overhead",
        run_name=tag,
        config=config.model_dump(mode="json"),
        config_yaml=config.to_yaml(),
        tags={},
    )
    result = train.fn(
        config.train_spec(setup["base"]),
        run_id=run_id,
        output_dir=config.adapter_dir(run_id),
        config_yaml=config.to_yaml(),
        callbacks=callbacks,
    )
    return {"tokens_per_second": result.tokens_per_second, "train_loss": result.train_loss}


def _plain(steps: int, tmp: str, tag: str, callbacks: list, setup: dict) -> dict:
    from bench.plain import train_plain

    spec = run_config(steps, tmp, setup).train_spec(setup["base"])
    return train_plain(spec, output_dir=f"{tmp}/plain-{tag}", callbacks=callbacks)


def paired_rounds(setup: dict, *, steps: int, reps: int, warmup_steps: int, tmp: str) -> dict:
    """A warm-up of each arm, then `reps` rounds of both in rotating order; each run's
    tokens/s, final loss and per-step times, {"pipeline": [...], "plain": [...]}."""
    from bench.clock import StepClock

    clock = StepClock()
    arms = {"pipeline": _pipeline, "plain": _plain}
    for name, fn in arms.items():
        fn(warmup_steps, tmp, f"warmup-{name}", [clock], setup)
    runs: dict[str, list[dict]] = {name: [] for name in arms}
    for rep in range(reps):
        order = list(arms)[rep % len(arms) :] + list(arms)[: rep % len(arms)]
        for name in order:
            clock.reset()
            got = arms[name](steps, tmp, f"{name}-{rep}", [clock], setup)
            got["step_seconds"] = clock.step_seconds()
            runs[name].append(got)
    return runs


def _work(steps: int, reps: int, warmup_steps: int, tmp: str) -> dict:
    return paired_rounds(DEMO_SETUP, steps=steps, reps=reps, warmup_steps=warmup_steps, tmp=tmp)


def run(*, steps: int = 120, reps: int = 7) -> Figure:
    require_demo_assets()
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        runs = run_worker(
            "bench.overhead",
            {"steps": steps, "reps": reps, "warmup_steps": 10, "tmp": tmp},
            env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"},
        )
    step_ratios = paired_step_ratios(runs["plain"], runs["pipeline"])
    ratio = median(step_ratios)
    tps = {name: [r["tokens_per_second"] for r in rs] for name, rs in runs.items()}
    pipeline, plain = median(tps["pipeline"]), median(tps["plain"])
    per_round = [a / b for a, b in zip(tps["pipeline"], tps["plain"], strict=True)]
    whole = median(per_round)
    step_ms = {
        name: 1000 * median([s for r in rs for s in r["step_seconds"]]) for name, rs in runs.items()
    }
    return Figure(
        number=1,
        name="overhead: pipeline train task vs plain Trainer + PEFT (tokens/s)",
        measured=(
            f"{ratio:.3f} per step (median of {len(step_ratios)} paired steps; "
            f"{step_ms['pipeline']:.1f} vs {step_ms['plain']:.1f} ms); whole runs {whole:.3f} "
            f"(median of {reps} rounds; {pipeline:,.0f} vs {plain:,.0f} tokens/s)"
        ),
        goal=f">= {GOAL}",
        command="python -m bench --only overhead",
        details={
            "ratio": ratio,
            "whole_run_ratio": whole,
            "pipeline_tokens_per_second": pipeline,
            "plain_tokens_per_second": plain,
            "median_step_ms": step_ms,
            "runs": runs,
            "per_round_ratio": per_round,
            "steps": steps,
            "goal_met": ratio >= GOAL,
        },
        lines=[
            f"demo config, {steps} steps x {reps} rounds in rotating order (+ a warm-up of each)",
            f"per step: median of {len(step_ratios)} paired step-time ratios {ratio:.3f} "
            f"(goal >= {GOAL}); median step {step_ms['pipeline']:.1f} ms pipeline, "
            f"{step_ms['plain']:.1f} ms plain",
            "whole runs, pipeline tokens/s: " + ", ".join(f"{v:,.0f}" for v in tps["pipeline"]),
            "whole runs, plain    tokens/s: " + ", ".join(f"{v:,.0f}" for v in tps["plain"]),
            "whole runs, per-round ratio:   " + ", ".join(f"{v:.3f}" for v in per_round),
            f"whole runs: median per-round ratio {whole:.3f}, ratio of the medians "
            f"{pipeline / plain:.3f}",
        ],
    )


if __name__ == "__main__":
    worker_main(_work)
