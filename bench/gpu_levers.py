"""`make gpu-check`'s lever rows: each speed option of issue 25 on and off in the same run.

The baseline is LoRA with every lever off (chunked_loss off, kernels none, no compile, padded
rows of batch_size, no gradient checkpointing), trained again right before the levers (the
method rows before it have warmed up CUDA, cuBLAS and the allocator) and printed as its own row.
Each lever trains LoRA again with that one option changed, on the same base, data and batch,
and its row says tokens/s and peak memory as multiples of the baseline's, so a lever is kept only
where it pays (docs/performance.md, "On a GPU"). A lever that cannot run here says "not run" and
why (Liger without liger-kernel, compile off CUDA), never something else in its place.
"""

from __future__ import annotations

import importlib.util

# Everything off: the baseline every lever is compared against.
LEVERS_OFF = {
    "chunked_loss": "off",
    "kernels": "none",
    "compile": False,
    "packing": False,
    "batch_tokens": None,
    "gradient_checkpointing": False,
}


def levers(batch_size: int, seq_len: int) -> dict[str, dict]:
    """name -> the TrainSpec fields that turn that one lever on."""
    return {
        "chunked_loss on": {"chunked_loss": "on"},
        "kernels liger": {"kernels": "liger"},
        "compile": {"compile": True},
        "packing": {"packing": True},
        # Twice the baseline's tokens per batch, sized by the budget instead of a row count.
        "batch_tokens 2x": {"batch_tokens": 2 * batch_size * seq_len},
        "gradient_checkpointing on": {"gradient_checkpointing": True},
    }


def not_run_reason(options: dict, device: str) -> str | None:
    """Why a lever cannot run here, or None."""
    if options.get("kernels") == "liger":
        if importlib.util.find_spec("liger_kernel") is None:
            return "liger-kernel is not installed (the gpu extra)"
        if device != "cuda":
            return "needs a CUDA device"
    if options.get("compile") and device != "cuda":
        return "needs a CUDA device"
    return None


def lever_rows(check, row_type) -> list:
    """The baseline's row, then one row per lever: `check.train` (bench.gpu_check.Check) with
    that lever on, against LoRA with LEVERS_OFF."""
    base_result, base_speed = check.train("lever-baseline", "lora", **LEVERS_OFF)
    flops = (4 * check.matmul_params + 6 * base_result.trainable_params) * base_speed
    rows = [
        row_type(
            "lever baseline (all off)",
            "ok" if base_result.train_loss > 0 else "FAILED",
            base_speed,
            base_result.peak_memory_bytes / 2**20,
            flops / check.peak_flops,
            f"loss {base_result.train_loss:.3f}",
        )
    ]
    large = check.large
    for name, options in levers(large.batch_size, large.seq_len).items():
        reason = not_run_reason(options, check.device)
        if reason:
            rows.append(row_type(f"lever {name}", "not run", note=reason))
            continue
        result, speed = check.train(
            f"lever-{name.replace(' ', '-')}",
            "lora",
            **{
                **LEVERS_OFF,
                **options,
            },
        )
        ok = result.train_loss > 0
        flops = (4 * check.matmul_params + 6 * result.trainable_params) * speed
        peak = result.peak_memory_bytes / max(base_result.peak_memory_bytes, 1)
        rows.append(
            row_type(
                f"lever {name}",
                "ok" if ok else "FAILED",
                speed,
                result.peak_memory_bytes / 2**20,
                flops / check.peak_flops,
                f"{speed / base_speed:.2f}x tokens/s, {peak:.2f}x peak vs lora (levers off); "
                f"loss {result.train_loss:.3f} vs {base_result.train_loss:.3f}",
            )
        )
    return rows
