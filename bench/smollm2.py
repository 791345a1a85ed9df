"""Figure 14: figures 1 and 6 on a real pretrained model, SmolLM2-135M-Instruct, with chat data.

The real-model example as it trains (configs/smollm2_lora.yaml: LoRA r=8 on q/k/v/o, batch 8,
chat format with the loss on the assistant's turn, its trip-note data built by demo/ into a
scratch directory), the base built by demo.smollm2 (cached per machine). One worker process:

- Overhead, as figure 1: the pipeline's train task and a plain Trainer + PEFT script (bench.plain,
  which renders the conversations with the tokenizer's chat template as a user would) alternate
  over `reps` rounds after a warm-up of each; the goal is judged on the median of the paired
  step-time ratios (step i of both arms sees the same batch).
- FLOP efficiency, as figure 6: FLOPs per real (non-padding) token 4 N + 6 x the adapter's
  parameters, N = weights used in matmuls (the tied lm_head included, the embedding lookup not);
  tokens per step from the plain arm's count (the same batches), over the pipeline arm's median
  step time; against the median fp32 2048^2 matmul rate measured in the same process.
- Where the time goes: one training batch through the LoRA model, forward and backward of the
  whole model (loss included) vs the decoder body alone (its hidden states summed), alternating,
  median of `probe_reps`; the rest is the 49,152-token head and its cross-entropy, shown beside
  that head's share of the counted FLOPs.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.flops import flops_per_token
from bench.measure import Figure, median, paired_step_ratios
from bench.overhead import GOAL, paired_rounds, run_config
from bench.workers import ROOT, run_worker, worker_main

CONFIG = ROOT / "configs" / "smollm2_lora.yaml"


def _lora_model(base: str, adapter):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = LoraConfig(
        r=adapter.r,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=adapter.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _counts(model) -> dict:
    import torch

    # PEFT's LoRA layers hold the base Linear and the adapter's own Linears (lora_A, lora_B):
    # the base's matmul weights are the Linears outside the adapter.
    matmul = sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and ".lora_" not in name
    )
    head = model.get_output_embeddings().weight.numel()
    adapter = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"matmul_params": matmul, "head_params": head, "adapter_params": adapter}


def _time_split(spec, reps: int) -> dict:
    """Median seconds of forward + backward of one training batch: the whole model with its loss,
    and the decoder body alone."""
    import torch
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq

    from bench.plain import tokenize_chat_jsonl

    tokenizer = AutoTokenizer.from_pretrained(spec.base_model)
    features = tokenize_chat_jsonl(spec.data.train_path, tokenizer, spec.data.max_seq_len)
    batch = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)(
        features[: spec.batch_size]
    )
    model = _lora_model(spec.base_model, spec.adapter)
    counts = _counts(model)
    body = model.get_base_model().model

    def whole() -> None:
        model(**batch).loss.backward()

    def body_only() -> None:
        hidden = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        hidden.last_hidden_state.sum().backward()

    times: dict[str, list[float]] = {"whole": [], "body": []}
    for rep in range(reps + 1):  # the first round warms up
        for name, fn in (("whole", whole), ("body", body_only)):
            model.zero_grad(set_to_none=True)
            started = time.perf_counter()
            fn()
            if rep:
                times[name].append(time.perf_counter() - started)
    return {
        **counts,
        "batch_shape": list(batch["input_ids"].shape),
        "real_tokens": int(batch["attention_mask"].sum()),
        "whole_s": median(times["whole"]),
        "body_s": median(times["body"]),
        "torch_threads": torch.get_num_threads(),
    }


def _work(steps: int, reps: int, warmup_steps: int, probe_reps: int, tmp: str) -> dict:
    import torch

    from bench.flops import matmul_peak
    from demo import build_smollm2_task_data
    from demo.smollm2 import build_smollm2

    base = build_smollm2()
    data = Path(tmp) / "data"
    build_smollm2_task_data(data)
    setup = {"config": str(CONFIG), "base": str(base), "data": str(data)}
    config = run_config(steps, tmp, setup)
    peak_before = matmul_peak("cpu", torch.float32, 2048)
    runs = paired_rounds(setup, steps=steps, reps=reps, warmup_steps=warmup_steps, tmp=tmp)
    split = _time_split(config.train_spec(str(base)), probe_reps)
    peak_after = matmul_peak("cpu", torch.float32, 2048)
    return {
        "runs": runs,
        "split": split,
        "peak_flops": max(peak_before, peak_after),
        "peak_before_after": [peak_before, peak_after],
        "batch_size": config.training.batch_size,
    }


def run(*, steps: int = 12, reps: int = 3, probe_reps: int = 5) -> Figure:
    with tempfile.TemporaryDirectory(prefix="bench-smollm2-") as tmp:
        got = run_worker(
            "bench.smollm2",
            {"steps": steps, "reps": reps, "warmup_steps": 2, "probe_reps": probe_reps, "tmp": tmp},
            env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"},
            timeout=3600,
        )
    runs, split = got["runs"], got["split"]
    step_ratios = paired_step_ratios(runs["plain"], runs["pipeline"])
    ratio = median(step_ratios)
    step_s = {name: median([s for r in rs for s in r["step_seconds"]]) for name, rs in runs.items()}
    tokens_per_step = median([r["tokens"] for r in runs["plain"]]) / steps
    losses = {name: [r["train_loss"] for r in rs] for name, rs in runs.items()}
    per_token = flops_per_token(split["matmul_params"], split["adapter_params"])
    achieved = per_token * tokens_per_step / step_s["pipeline"]
    efficiency = achieved / got["peak_flops"]
    head_time = 1 - split["body_s"] / split["whole_s"]
    head_flops = split["head_params"] / split["matmul_params"]
    return Figure(
        number=14,
        name="real model (SmolLM2-135M-Instruct, chat): overhead and FLOP efficiency",
        measured=(
            f"overhead {ratio:.3f} per step (median of {len(step_ratios)} paired steps; "
            f"{1000 * step_s['pipeline']:.0f} vs {1000 * step_s['plain']:.0f} ms); "
            f"{achieved / 1e9:.1f} GFLOP/s = {efficiency:.0%} of matmul peak "
            f"({got['peak_flops'] / 1e9:.1f} GFLOP/s fp32); head + loss {head_time:.0%} of a "
            f"step for {head_flops:.0%} of its FLOPs"
        ),
        goal=f">= {GOAL}",
        command="python -m bench --only smollm2",
        details={
            "ratio": ratio,
            "step_seconds": step_s,
            "tokens_per_step": tokens_per_step,
            "train_loss": losses,
            "flops_per_token": per_token,
            "achieved_flops": achieved,
            "efficiency": efficiency,
            "head_time_share": head_time,
            "head_flop_share": head_flops,
            **got,
            "goal_met": ratio >= GOAL,
        },
        lines=[
            f"configs/smollm2_lora.yaml (LoRA r=8 q/k/v/o, batch {got['batch_size']}, chat, "
            f"loss on the assistant turn), {steps} steps x {reps} rounds in rotating order "
            "(+ a warm-up of each)",
            f"per step: median of {len(step_ratios)} paired step-time ratios {ratio:.3f} "
            f"(goal >= {GOAL}); median step {1000 * step_s['pipeline']:.0f} ms pipeline, "
            f"{1000 * step_s['plain']:.0f} ms plain",
            "final loss per round, pipeline: " + ", ".join(f"{v:.4f}" for v in losses["pipeline"]),
            "final loss per round, plain:    " + ", ".join(f"{v:.4f}" for v in losses["plain"]),
            f"{tokens_per_step:.0f} real tokens/step x {per_token / 1e6:.0f} MFLOP/token "
            f"({split['matmul_params']:,} matmul weights, adapter {split['adapter_params']:,}) "
            f"/ {step_s['pipeline']:.3f} s = {achieved / 1e9:.1f} GFLOP/s; matmul peak "
            + " / ".join(f"{v / 1e9:.1f}" for v in got["peak_before_after"])
            + f" GFLOP/s (before/after) -> {efficiency:.1%}",
            f"one batch {split['batch_shape']} ({split['real_tokens']} real tokens), forward + "
            f"backward: whole model {1000 * split['whole_s']:.0f} ms, decoder body alone "
            f"{1000 * split['body_s']:.0f} ms -> the {split['head_params']:,}-weight head + "
            f"cross-entropy take {head_time:.0%} of the time for {head_flops:.0%} of the "
            "counted FLOPs",
        ],
    )


if __name__ == "__main__":
    worker_main(_work)
