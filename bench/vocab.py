"""Figure 12: `training.chunked_loss` off vs on with a 128k vocabulary: peak training memory,
speed and loss.

A narrow Llama-shaped model (hidden 256, 2 layers, random weights) with Llama 3's vocabulary of
128,256 tokens (untied head, the demo tokenizer's ids are a subset), LoRA r=8 on all linear
layers, rows of exactly `seq_len` tokens, through the pipeline's `train_adapter`. With batch 8 x
256 the fp32 logits alone are 1 GiB, and cross-entropy's backward holds as much again, while the
whole model is 0.26 GiB: the logits dominate training memory, as they do for an 8B-class model
at 4k tokens per batch. Each arm trains in a fresh process with bench.workers.MEMORY_ENV (as
figure 3), peak = train_adapter's own figure (growth of the peak resident set over
`trainer.train()` on CPU, `max_memory_allocated` on CUDA); loss = the Trainer's logged loss of
every step, which must agree within 1e-5 relative; tokens/s from the per-step log after the
warmup step.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.assets import DEMO_BASE, require_demo_assets, train_lora
from bench.data import write_long_data
from bench.measure import Figure
from bench.workers import MEMORY_ENV, device_kind, run_worker, worker_main

MiB = 1 << 20
VOCAB, HIDDEN, LAYERS = 128_256, 256, 2
SEQ_LEN, BATCH, WARMUP, STEPS = 256, 8, 1, 3
REL = 1e-5
GOAL = "chunked / plain peak < 1 with the loss equal within 1e-5 relative at every step"


def _build_base(out: Path) -> int:
    """The narrow 128k-vocabulary base, saved to `out` with the demo tokenizer; its params."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from demo import model_config

    tokenizer = AutoTokenizer.from_pretrained(str(DEMO_BASE))
    config = model_config(tokenizer, HIDDEN, LAYERS, head_dim=64)
    config.vocab_size, config.tie_word_embeddings = VOCAB, False
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def _work(chunked_loss: str, tmp: str) -> dict:
    root = Path(tmp)
    total_params = _build_base(root / "base")
    data = write_long_data(root / "data", n=BATCH * (WARMUP + STEPS))
    stamps: dict[int, float] = {}

    def on_log(logs: dict, step: int) -> None:
        if "loss" in logs:
            stamps[step] = time.perf_counter()

    result = train_lora(
        root / "adapter",
        steps=WARMUP + STEPS,
        data={"path": str(data), "max_seq_len": SEQ_LEN, "too_long": "truncate"},
        on_log=on_log,
        save=False,
        base_model=str(root / "base"),
        learning_rate=1e-4,
        batch_size=BATCH,
        logging_steps=1,
        device=device_kind(),
        chunked_loss=chunked_loss,
    )
    seconds = stamps[WARMUP + STEPS] - stamps[WARMUP]
    return {
        "total_params": total_params,
        "chunked": result.chunked_loss,
        "peak_bytes": result.peak_memory_bytes,
        "peak_kind": result.peak_memory_kind,
        "losses": [loss for _, loss in result.loss_history],
        "tokens_per_second": STEPS * BATCH * SEQ_LEN / seconds,
    }


def run() -> Figure:
    require_demo_assets()
    arms = {}
    for setting in ("off", "on"):
        with tempfile.TemporaryDirectory(prefix="bench-vocab-") as tmp:
            arms[setting] = run_worker(
                "bench.vocab", {"chunked_loss": setting, "tmp": tmp}, env=MEMORY_ENV
            )
    return _figure(arms["off"], arms["on"])


def _figure(off: dict, on: dict) -> Figure:
    peak = on["peak_bytes"] / off["peak_bytes"]
    speed = on["tokens_per_second"] / off["tokens_per_second"]
    worst = max(abs(a - b) / abs(b) for a, b in zip(on["losses"], off["losses"], strict=True))
    met = on["chunked"] and not off["chunked"] and peak < 1 and worst <= REL
    params = off["total_params"] / 1e6
    logits = BATCH * SEQ_LEN * VOCAB * 4 / MiB
    return Figure(
        number=12,
        name=f"chunked loss on vs off, 128k vocabulary: peak training memory ({params:.0f}M model)",
        measured=(
            f"peak {peak:.2f}x ({on['peak_bytes'] / MiB:,.0f} vs {off['peak_bytes'] / MiB:,.0f} "
            f"MiB), tokens/s {speed:.2f}x, loss equal within {worst:.1e} relative"
        ),
        goal=GOAL,
        command="python -m bench --only vocab",
        details={"arms": {"off": off, "on": on}, "peak_ratio": peak, "speed_ratio": speed}
        | {"worst_loss_rel": worst, "goal_met": met},
        lines=[
            f"Llama-shaped, hidden {HIDDEN}, {LAYERS} layers, vocabulary {VOCAB:,} "
            f"({params:.0f}M params), LoRA r=8 all linear, batch {BATCH} x {SEQ_LEN} tokens "
            f"(fp32 logits {logits:,.0f} MiB), {STEPS} timed steps after {WARMUP}; a fresh "
            f"process per arm; peak = {off['peak_kind']}",
            f"off: peak {off['peak_bytes'] / MiB:,.1f} MiB, "
            f"{off['tokens_per_second']:,.0f} tokens/s, losses "
            + ", ".join(f"{x:.6f}" for x in off["losses"]),
            f"on:  peak {on['peak_bytes'] / MiB:,.1f} MiB, "
            f"{on['tokens_per_second']:,.0f} tokens/s, losses "
            + ", ".join(f"{x:.6f}" for x in on["losses"]),
            f"on / off: peak {peak:.3f}x, tokens/s {speed:.3f}x; largest loss difference "
            f"{worst:.2e} relative",
        ],
    )


if __name__ == "__main__":
    worker_main(_work)
