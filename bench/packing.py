"""Figure 2: `training.packing: true` vs padded batches on data of varied lengths.

Both arms run the pipeline's `train_adapter` on the same data, seed and steps (so the same
examples in the same batches); tokens/s counts real tokens. Each seed trains both arms, in an
order that flips every seed; then each adapter's eval loss is computed on the eval split. The
padded arm's spread over seeds is the noise the packed-vs-padded difference is judged against.

The speed figure is the median over paired steps (bench.clock.StepClock): step i of both arms
of a seed holds the same examples, so the ratio of their step times is the tokens/s ratio of
that batch; a host stall then spoils a step or two instead of a whole run. Whole-run tokens/s
(over `trainer.train()`) are reported beside it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.assets import DEMO_BASE, require_demo_assets, train_lora
from bench.data import write_varied_data
from bench.measure import Figure, median, paired_step_ratios
from bench.workers import run_worker, worker_main

GOAL = 1.5
MAX_SEQ_LEN = 128
BATCH = 16


def _train_and_eval(
    data: Path, out: Path, *, packing: bool, seed: int, steps: int, callbacks: list
) -> dict:
    from models.data.splits import read_split, tokenize
    from models.evaluation.evaluate import completion_loss
    from models.evaluation.serving import load_adapted

    result = train_lora(
        out,
        steps=steps,
        seed=seed,
        data={"path": str(data), "max_seq_len": MAX_SEQ_LEN},
        callbacks=callbacks,
        batch_size=BATCH,
        warmup_steps=max(1, steps // 10),
        logging_steps=steps,
        packing=packing,
    )
    model, tokenizer = load_adapted(str(DEMO_BASE), out)
    examples = read_split(data / "eval.jsonl")
    features = tokenize(examples, tokenizer, MAX_SEQ_LEN, "reject").features
    return {
        "tokens_per_second": result.tokens_per_second,
        "train_seconds": result.train_seconds,
        "eval_loss": completion_loss(model, tokenizer, features, batch_size=50),
    }


def _work(steps: int, seeds: list[int], tmp: str) -> dict:
    from bench.clock import StepClock

    clock = StepClock()
    data = write_varied_data(Path(tmp) / "data", n_train=1024, n_eval=200)
    runs: dict[str, list[dict]] = {"padded": [], "packed": []}
    for i, seed in enumerate(seeds):
        order = ["padded", "packed"] if i % 2 == 0 else ["packed", "padded"]
        for arm in order:
            out = Path(tmp) / f"{arm}-{seed}"
            clock.reset()
            got = _train_and_eval(
                data, out, packing=arm == "packed", seed=seed, steps=steps, callbacks=[clock]
            )
            runs[arm].append({"seed": seed, **got, "step_seconds": clock.step_seconds()})
    return {"runs": runs}


def run(*, steps: int = 40, seeds: tuple[int, ...] = (0, 1, 2)) -> Figure:
    require_demo_assets()
    with tempfile.TemporaryDirectory(prefix="bench-packing-") as tmp:
        got = run_worker("bench.packing", {"steps": steps, "seeds": list(seeds), "tmp": tmp})
    runs = got["runs"]
    step_ratios = paired_step_ratios(runs["padded"], runs["packed"])
    ratio = median(step_ratios)
    tps = {arm: [r["tokens_per_second"] for r in rs] for arm, rs in runs.items()}
    whole = median(tps["packed"]) / median(tps["padded"])
    loss = {arm: [r["eval_loss"] for r in rs] for arm, rs in runs.items()}
    diffs = [abs(a - b) for a, b in zip(loss["packed"], loss["padded"], strict=True)]
    noise = max(loss["padded"]) - min(loss["padded"])
    same = max(diffs) < noise
    return Figure(
        number=2,
        name="packing: packed vs padded batches, varied lengths (tokens/s; eval loss)",
        measured=(
            f"{ratio:.2f}x per step (median of {len(step_ratios)} paired steps); whole runs "
            f"{whole:.2f}x ({median(tps['packed']):,.0f} vs {median(tps['padded']):,.0f} "
            f"tokens/s); eval loss |diff| <= {max(diffs):.1e} vs seed spread {noise:.1e}"
        ),
        goal=f">= {GOAL}x, eval loss within noise",
        command="python -m bench --only packing",
        details={
            "ratio": ratio,
            "whole_run_ratio": whole,
            "max_eval_loss_diff": max(diffs),
            "seed_spread": noise,
            "within_noise": same,
            "goal_met": ratio >= GOAL and same,
            "runs": runs,
        },
        lines=[
            f"demo base, LoRA r=8 all linear, batch {BATCH}, {steps} steps, seeds {list(seeds)}; "
            "data: demo task over 2-40 words (~10-90 tokens per example)",
            f"per step: median of {len(step_ratios)} paired step-time ratios {ratio:.2f}",
            "whole runs, padded tokens/s: " + ", ".join(f"{v:,.0f}" for v in tps["padded"]),
            "whole runs, packed tokens/s: " + ", ".join(f"{v:,.0f}" for v in tps["packed"]),
            f"whole runs: ratio of the medians {whole:.2f}",
            "padded eval loss: " + ", ".join(f"{v:.5f}" for v in loss["padded"]),
            "packed eval loss: " + ", ".join(f"{v:.5f}" for v in loss["packed"]),
            f"per-step tokens/s ratio {ratio:.2f} (goal >= {GOAL}); same-seed eval loss |diff| max "
            f"{max(diffs):.1e} vs spread over seeds {noise:.1e}: "
            + ("within noise" if same else "NOT within noise"),
        ],
    )


if __name__ == "__main__":
    worker_main(_work)
