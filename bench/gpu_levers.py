"""`make gpu-check`'s lever rows: each speed option of issue 25 on and off in the same run.

The baseline is LoRA with every lever off (chunked_loss off, kernels none, no compile, padded
rows of batch_size, no gradient checkpointing), trained again right before the levers (the
method rows before it have warmed up CUDA, cuBLAS and the allocator) and printed as its own row.
Each lever trains LoRA again with that one option changed, on the same base, data and batch,
and its row says tokens/s and peak memory as multiples of the baseline's, so a lever is kept only
where it pays (docs/performance.md, "On a GPU"). Last, "lever combined" trains with every speed
lever that ran at >= 1.05x the baseline on at once (gradient checkpointing, a memory lever, is
never among them): the 0.85B row issue 36 asks to double. A lever that cannot run here says
"not run" and why (Liger without liger-kernel, compile off CUDA), never something else in its place.
"""

from __future__ import annotations

import importlib.util
import traceback

from bench.flops import flops_per_token

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
    """name -> the TrainSpec fields that turn that one lever on. Compile last: its compile time
    is the least known, and a run cut short by a time limit keeps the rows before it."""
    return {
        "chunked_loss on": {"chunked_loss": "on"},
        "kernels liger": {"kernels": "liger"},
        "packing": {"packing": True},
        # Twice the baseline's tokens per batch, sized by the budget instead of a row count.
        "batch_tokens 2x": {"batch_tokens": 2 * batch_size * seq_len},
        "gradient_checkpointing on": {"gradient_checkpointing": True},
        "compile": {"compile": True},
    }


# Levers that buy memory, not speed: never in the combined row.
MEMORY_LEVERS = {"gradient_checkpointing on"}
PAYS = 1.05  # a lever joins the combined row from this multiple of the baseline's tokens/s


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


def combined(ratios: dict[str, float], batch_size: int, seq_len: int) -> tuple[list[str], dict]:
    """(names, options) of every speed lever that ran at >= PAYS x the baseline's tokens/s.
    Liger fuses the head and the loss itself, so with it the chunked loss is left out (the
    config refuses the two together)."""
    options = levers(batch_size, seq_len)
    paid = [n for n, r in ratios.items() if r >= PAYS and n not in MEMORY_LEVERS]
    if "kernels liger" in paid and "chunked_loss on" in paid:
        paid.remove("chunked_loss on")
    return paid, {k: v for name in paid for k, v in options[name].items()}


def lever_rows(check, row_type):
    """The baseline's row, then one row per lever: `check.train` (bench.gpu_check.Check) with
    that lever on, against LoRA with LEVERS_OFF; then every lever that paid, together. Rows are
    yielded as they are measured; a lever that fails gives a FAILED row and the next one runs."""
    base_result, base_speed = check.train("lever-baseline", "lora", **LEVERS_OFF)
    yield _row(check, row_type, "lever baseline (all off)", base_result, base_speed, note="")
    large, ratios = check.large, {}

    def measure(name: str, options: dict):
        try:
            result, speed = check.train(f"lever-{name.replace(' ', '-')}", "lora", **options)
        except Exception as e:  # noqa: BLE001 - reported in the row, with the traceback
            from bench.gpu_check import error_note

            traceback.print_exc()
            return row_type(f"lever {name}", "FAILED", note=error_note(e)), None
        peak = result.peak_memory_bytes / max(base_result.peak_memory_bytes, 1)
        note = (
            f"{speed / base_speed:.2f}x tokens/s, {peak:.2f}x peak vs lora (levers off); "
            f"loss {result.train_loss:.3f} vs {base_result.train_loss:.3f}"
        )
        row = _row(check, row_type, f"lever {name}", result, speed, note)
        row.ratio = speed / base_speed
        return row, row.ratio if row.status == "ok" else None

    for name, options in levers(large.batch_size, large.seq_len).items():
        reason = not_run_reason(options, check.device)
        if reason:
            yield row_type(f"lever {name}", "not run", note=reason)
            continue
        row, ratio = measure(name, {**LEVERS_OFF, **options})
        if ratio is not None:
            ratios[name] = ratio
        yield row
    paid, together = combined(ratios, large.batch_size, large.seq_len)
    if len(paid) < 2:
        yield row_type(
            "lever combined",
            "not run",
            note=f"fewer than two levers ran at >= {PAYS}x the baseline: "
            f"{', '.join(paid) or 'none'}",
        )
        return
    row, _ = measure("combined", {**LEVERS_OFF, **together})
    row.note = f"{' + '.join(paid)}: {row.note}"
    yield row


def _row(check, row_type, name: str, result, speed: float, note: str):
    flops = flops_per_token(check.matmul_params, result.trainable_params) * speed
    return row_type(
        name,
        "ok" if result.train_loss > 0 else "FAILED",  # nan, or no completion token trained
        speed,
        result.peak_memory_bytes / 2**20,
        flops / check.peak_flops,
        note or f"loss {result.train_loss:.3f}",
    )
