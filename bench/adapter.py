"""Figure 4: adapter size vs base size; forward latency of base, adapter unmerged and merged.

One worker trains a short LoRA adapter on the demo config with the pipeline's `train_adapter`,
then times one forward pass of a batch of eval examples for the base model, the base with the
adapter as PEFT layers (unmerged) and the adapter merged into the weights (`merge_and_unload`):
a warm-up of each, then `reps` rounds in an order that rotates every round; medians.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.assets import DEMO_BASE, DEMO_DATA, require_demo_assets, train_lora
from bench.measure import Figure, median
from bench.workers import device_kind, run_worker, worker_main


def _work(steps: int, reps: int, batch_size: int, tmp: str) -> dict:
    import torch

    from models.base_model.loading import load_base
    from models.data.splits import pad_batch, read_split, tokenize
    from models.evaluation.serving import load_adapted
    from models.training.train import ADAPTER_WEIGHTS

    device = device_kind()
    out = Path(tmp) / "adapter"
    train_lora(out, steps=steps, logging_steps=steps, device=device)
    base, tokenizer = load_base(str(DEMO_BASE), device=device)
    base.eval()
    unmerged, _ = load_adapted(str(DEMO_BASE), out, device=device)
    merged = load_adapted(str(DEMO_BASE), out, device=device)[0].merge_and_unload()
    merged.eval()
    examples = read_split(DEMO_DATA / "eval.jsonl")[:batch_size]
    batch = pad_batch(tokenize(examples, tokenizer, 64, "reject").features, 0)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    inputs = {k: v.to(device) for k, v in inputs.items()}
    models = {"base": base, "unmerged": unmerged, "merged": merged}

    def forward_ms(model) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        model(**inputs)
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - started) * 1000

    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    with torch.inference_mode():
        for model in models.values():
            for _ in range(3):
                forward_ms(model)
        for rep in range(reps):
            for name in names[rep % 3 :] + names[: rep % 3]:
                times[name].append(forward_ms(models[name]))
        diff = (unmerged(**inputs).logits - merged(**inputs).logits).abs().max().item()
    return {
        "adapter_bytes": (out / ADAPTER_WEIGHTS).stat().st_size,
        "base_bytes": sum(p.stat().st_size for p in DEMO_BASE.glob("*.safetensors")),
        "times_ms": times,
        "merged_vs_unmerged_max_abs_logit_diff": diff,
        "tokens": int(batch["attention_mask"].sum()),
        "shape": list(batch["input_ids"].shape),
    }


def run(*, steps: int = 30, reps: int = 30, batch_size: int = 16) -> Figure:
    require_demo_assets()
    with tempfile.TemporaryDirectory(prefix="bench-adapter-") as tmp:
        got = run_worker(
            "bench.adapter", {"steps": steps, "reps": reps, "batch_size": batch_size, "tmp": tmp}
        )
    ms = {name: median(values) for name, values in got["times_ms"].items()}
    size_ratio = got["adapter_bytes"] / got["base_bytes"]
    return Figure(
        number=4,
        name="adapter size vs base; forward latency base / merged / unmerged",
        measured=(
            f"{got['adapter_bytes']:,} vs {got['base_bytes']:,} bytes ({size_ratio:.1%}); "
            f"{ms['base']:.2f} / {ms['merged']:.2f} / {ms['unmerged']:.2f} ms "
            f"(unmerged {ms['unmerged'] / ms['base']:.2f}x base)"
        ),
        goal="report (median of >= 20)",
        command="python -m bench --only adapter",
        details={**got, "median_ms": ms, "size_ratio": size_ratio},
        lines=[
            f"LoRA r=8 on all 7 linear layers of the demo base ({steps} training steps)",
            f"adapter_model.safetensors {got['adapter_bytes']:,} bytes, base weights "
            f"{got['base_bytes']:,} bytes: {size_ratio:.2%}",
            f"forward of one eval batch {got['shape'][0]} x {got['shape'][1]}, median of {reps} "
            "(rotating order): "
            + ", ".join(f"{name} {value:.2f} ms" for name, value in ms.items()),
            "merged vs unmerged logits: max abs diff "
            f"{got['merged_vs_unmerged_max_abs_logit_diff']:.1e}",
        ],
    )


if __name__ == "__main__":
    worker_main(_work)
