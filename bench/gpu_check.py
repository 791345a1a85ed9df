"""`make gpu-check`: what loraflow does on one CUDA GPU, in one table (under 8 minutes on an H200).

    python -m bench.gpu_check                     # CUDA: a ~0.85B Llama-shaped random base, bf16
    python -m bench.gpu_check --device cpu --tiny # the same code path on a tiny model (the test)
    python -m bench.gpu_check --rows methods,levers --methods lora,qlora  # a part of the table

Rows: bf16 training of every adapter method (tokens/s, peak training memory as
torch.cuda.max_memory_allocated over training, MFU = achieved FLOP/s over a bf16 matmul peak
measured in the same process); QLoRA needs bitsandbytes and CUDA, and is reported "not run" with
the reason where either is missing (never replaced by something else); deterministic mode twice
(the two adapters must be equal bytes); an export round trip (merge into the base, load the
merged model, compare its logits with the unmerged adapter's); QLoRA's time per step as a
multiple of LoRA's; the lever rows (bench.gpu_levers); LoRA on a Llama-3-8B-shaped random base
made on the GPU (bench.gpu_8b). On CUDA an untimed LoRA training runs first, so that no row pays
for CUDA's start. Each row is printed as it is measured (and --json rewritten), the whole table
at the end. FLOPs per token as in
figure 6 (bench.flops): 4 x the base's matmul weights + 6 x the trainable parameters, attention
scores not counted. Imports only torch, transformers, peft, safetensors and PyYAML (not the
pipeline's Prefect/MLflow/pydantic), so the python3 of a GPU machine runs it with PYTHONPATH=.
(docs/performance.md, "On a lent GPU"). Exit code 1 when a row fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from bench.assets import DEMO_BASE, train_lora
from bench.data import write_long_data
from bench.flops import LargeRun, _build_large_base, flops_per_token, matmul_peak
from bench.gpu_levers import LEVERS_OFF, lever_rows

# hidden 2048 x 16 layers: 0.85B parameters; batch 8 x 512 tokens.
GPU_RUN = LargeRun(hidden=2048, layers=16, seq_len=512, batch_size=8, warmup=3, steps=10)
# Rows must be longer than the data's ~200-character prompts, or no completion token is trained.
TINY_RUN = LargeRun(hidden=64, layers=2, seq_len=128, batch_size=2, warmup=1, steps=2)


@dataclass
class Row:
    """One line of the table."""

    check: str
    status: str  # ok, FAILED, not run
    tokens_per_second: float | None = None
    peak_mib: float | None = None
    mfu: float | None = None
    note: str = ""
    # A multiple measured against a baseline in the same run: tokens/s over LoRA's with the
    # levers off (lever rows), QLoRA's time per step over LoRA's (the QLoRA ratio row).
    ratio: float | None = None


def not_run_reason(method: str, device: str) -> str | None:
    """Why `method` cannot run here, or None. QLoRA: 4-bit kernels need CUDA and bitsandbytes."""
    from models.methods import get_method

    if get_method(method).needs_cuda and device != "cuda":
        return "needs a CUDA device"
    if method == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (pip install bitsandbytes)"
    return None


class Check:
    """The trainings of one check run: a random base, long rows, one dtype and device."""

    def __init__(self, tmp: Path, large: LargeRun, device: str):
        import torch

        self.tmp, self.large, self.device = tmp, large, device
        self.dtype = "bfloat16" if device == "cuda" else "float32"
        base, _, self.matmul_params = _build_large_base(tmp / "base", large.hidden, large.layers)
        self.base = str(base)
        n = large.batch_size * (large.warmup + large.steps)
        self.data = str(write_long_data(tmp / "data", n=n))
        size = 8192 if device == "cuda" else 512
        self.peak_flops = matmul_peak(device, getattr(torch, self.dtype), size)

    def warm_up(self) -> None:
        """One untimed LoRA training on CUDA, so that the first row does not pay for CUDA's,
        cuBLAS's and the allocator's start (the first H200 run's LoRA row did)."""
        if self.device == "cuda":
            self.train("warm-up", "lora", **LEVERS_OFF)

    def train(self, name: str, method: str, **options):
        """train_adapter through the benchmarks' spec; returns (TrainResult, timed tokens/s)."""
        large, stamps = self.large, {}

        def on_log(logs: dict, step: int) -> None:
            if "loss" in logs:
                stamps[step] = time.perf_counter()

        result = train_lora(
            self.tmp / name,
            steps=large.warmup + large.steps,
            data={"path": self.data, "max_seq_len": large.seq_len, "too_long": "truncate"},
            on_log=on_log,
            base_model=self.base,
            method=method,
            device=self.device,
            dtype=self.dtype,
            learning_rate=1e-4,
            batch_size=large.batch_size,
            logging_steps=1,
            **options,
        )
        seconds = stamps[large.warmup + large.steps] - stamps[large.warmup]
        return result, large.steps * large.batch_size * large.seq_len / seconds

    def method_row(self, method: str) -> Row:
        reason = not_run_reason(method, self.device)
        if reason:
            return Row(f"train {method}", "not run", note=reason)
        result, tokens_per_second = self.train(method, method, **LEVERS_OFF)
        if not result.train_loss > 0:  # nan, or no completion token in the rows
            return Row(f"train {method}", "FAILED", note=f"train loss {result.train_loss}")
        flops = flops_per_token(self.matmul_params, result.trainable_params) * tokens_per_second
        return Row(
            f"train {method}",
            "ok",
            tokens_per_second,
            result.peak_memory_bytes / 2**20,
            flops / self.peak_flops,
            f"{result.peak_memory_kind}, loss {result.train_loss:.3f}",
        )

    def deterministic_row(self) -> Row:
        shas = [self.train(f"det-{i}", "lora", deterministic=True)[0] for i in range(2)]
        same = shas[0].adapter_sha256 == shas[1].adapter_sha256
        note = f"adapter sha256 {shas[0].adapter_sha256[:12]} / {shas[1].adapter_sha256[:12]}"
        return Row("deterministic twice", "ok" if same else "FAILED", note=note)

    def export_row(self, tolerance: float) -> Row:
        import torch

        from models.base_model.loading import load_base
        from models.evaluation.serving import load_adapted
        from models.export.merge import merge_adapter

        adapter = str(self.tmp / "lora")  # trained by method_row("lora")
        out = self.tmp / "merged"
        files = merge_adapter(base_model=self.base, adapter_dir=adapter, out_dir=out)
        ids = torch.arange(64).reshape(2, 32) % 100 + 5
        kwargs = {"dtype": torch.float32, "device": self.device}
        with torch.no_grad():
            merged, _ = load_base(str(out), **kwargs)
            got = merged(ids.to(self.device)).logits.float().cpu()
            del merged
            adapted, _ = load_adapted(self.base, adapter, **kwargs)
            want = adapted(ids.to(self.device)).logits.float().cpu()
        diff = (got - want).abs().max().item()
        note = f"{len(files)} files; merged vs unmerged logits max |diff| {diff:.2e} (fp32)"
        return Row("export round trip", "ok" if diff <= tolerance else "FAILED", note=note)


def error_note(e: Exception, width: int = 120) -> str:
    """An exception in one line for a row's note: its type and its message's first line."""
    lines = str(e).splitlines()
    return f"{type(e).__name__}: {lines[0][:width] if lines else ''}"


def guarded(check: str, make_row) -> Row:
    """A row, or a FAILED row naming the error (the table is still printed)."""
    try:
        return make_row()
    except Exception as e:  # noqa: BLE001 - reported in the row, with the traceback on stderr
        traceback.print_exc()
        return Row(check, "FAILED", note=error_note(e))


def guarded_rows(check: str, make_rows, add) -> None:
    """add() each row of the iterable make_rows() as it comes; an error ends them with one
    FAILED row naming it (the rows before it stay)."""
    try:
        for row in make_rows():
            add(row)
    except Exception as e:  # noqa: BLE001 - reported in the row, with the traceback on stderr
        traceback.print_exc()
        add(Row(check, "FAILED", note=error_note(e)))


ROW_GROUPS = ("methods", "levers", "determinism", "export", "8b")


def qlora_ratio_row(rows: list[Row]) -> Row:
    """QLoRA's time per step as a multiple of LoRA's, both trained in this run on the same base,
    data and batch (so the ratio of their tokens/s, inverted); "not run" with the reason where
    either row did not run."""
    by_name = {r.check: r for r in rows}
    lora, qlora = by_name.get("train lora"), by_name.get("train qlora")
    for row, name in ((qlora, "train qlora"), (lora, "train lora")):
        if row is None or row.status != "ok":
            why = "not in this run" if row is None else f"{row.status}: {row.note}"
            return Row("qlora / lora time per step", "not run", note=f"{name} {why}")
    ratio = lora.tokens_per_second / qlora.tokens_per_second
    note = f"{ratio:.2f}x LoRA's time per step (same base, data and batch, this run)"
    return Row("qlora / lora time per step", "ok", note=note, ratio=ratio)


def run_checks(
    device: str,
    large: LargeRun,
    tmp: Path,
    groups: tuple[str, ...] = ROW_GROUPS,
    methods: tuple[str, ...] | None = None,
    on_row=None,
) -> tuple[list[Row], dict]:
    """Every row of `groups` (ROW_GROUPS), in order, the method rows for `methods` (default: all);
    on_row(rows, setup) is called after each row (the table so far). The second value describes
    the setup."""
    import torch

    from bench.gpu_8b import LLAMA3_8B, TINY, row_8b
    from models.methods import METHOD_NAMES

    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu-check: no CUDA device here (use --device cpu --tiny off a GPU)")
    rows: list[Row] = []
    setup = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
    }

    def add(row: Row) -> None:
        rows.append(row)
        if on_row:
            on_row(rows, setup)

    if set(groups) - {"8b"}:
        check = Check(tmp, large, device)
        setup |= {
            "dtype": check.dtype,
            "base": f"Llama-shaped random, hidden {large.hidden} x {large.layers} layers, "
            f"{check.matmul_params / 1e9:.2f}B matmul weights",
            "batch": f"{large.batch_size} x {large.seq_len} tokens, {large.steps} timed steps "
            f"after {large.warmup}",
            "matmul_peak_tflops": check.peak_flops / 1e12,
        }
        check.warm_up()
    if "methods" in groups:
        for m in methods or METHOD_NAMES:
            add(guarded(f"train {m}", lambda m=m: check.method_row(m)))
        add(qlora_ratio_row(rows))
    if "levers" in groups:
        guarded_rows("levers", lambda: lever_rows(check, Row), add)
    if "determinism" in groups:
        add(guarded("deterministic twice", check.deterministic_row))
    if "export" in groups:
        if not any(r.check == "train lora" and r.status == "ok" for r in rows):
            add(Row("export round trip", "not run", note="needs the train lora row's adapter"))
        else:
            add(guarded("export round trip", lambda: check.export_row(tolerance=1e-3)))
    if "8b" in groups:
        shape = TINY if large == TINY_RUN else LLAMA3_8B
        peak = setup.get("matmul_peak_tflops")
        add(
            guarded(
                "train lora 8B-class",
                lambda: row_8b(Row, device, shape, peak * 1e12 if peak else None),
            )
        )
    return rows, setup


def table(rows: list[Row]) -> str:
    lines = ["| check | status | tokens/s | peak MiB | MFU | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        cells = [
            r.check,
            r.status,
            f"{r.tokens_per_second:,.0f}" if r.tokens_per_second is not None else "",
            f"{r.peak_mib:,.0f}" if r.peak_mib is not None else "",
            f"{r.mfu:.1%}" if r.mfu is not None else "",
            r.note,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _names(text: str, allowed: tuple[str, ...], flag: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise SystemExit(f"gpu-check: {flag} {text!r}: choose from {', '.join(allowed)}")
    return names


def main(argv: list[str] | None = None) -> int:
    from models.methods import METHOD_NAMES

    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny model (the test's size)")
    parser.add_argument(
        "--json", type=Path, default=None, help="also write the rows here (after every row)"
    )
    parser.add_argument(
        "--rows",
        default=",".join(ROW_GROUPS),
        help=f"comma-separated groups of rows, of {', '.join(ROW_GROUPS)} (default: all)",
    )
    parser.add_argument(
        "--methods", default=",".join(METHOD_NAMES), help="the methods' rows (default: all)"
    )
    args = parser.parse_args(argv)
    groups = _names(args.rows, ROW_GROUPS, "--rows")
    methods = _names(args.methods, METHOD_NAMES, "--methods")
    if not (DEMO_BASE / "tokenizer.json").is_file():  # the base's tokenizer; no demo data
        raise SystemExit(f"gpu-check: {DEMO_BASE}/tokenizer.json missing (shipped in git)")
    started = time.perf_counter()

    def on_row(rows: list[Row], setup: dict) -> None:
        # Each row as it is measured, and the table so far on disk: a run stopped by a time
        # limit keeps every row before the one it was measuring.
        print(table(rows[-1:]).splitlines()[-1], flush=True)
        if args.json:
            write_json(args.json, {**setup, "seconds": time.perf_counter() - started}, rows)

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        large = TINY_RUN if args.tiny else GPU_RUN
        rows, setup = run_checks(args.device, large, Path(tmp), groups, methods, on_row)
    setup["seconds"] = time.perf_counter() - started
    print(
        "\n".join(
            f"{k}: {v:.1f}" if isinstance(v, float) else f"{k}: {v}" for k, v in setup.items()
        )
    )
    print(table(rows))
    if args.json:
        write_json(args.json, setup, rows)
    return 1 if any(r.status == "FAILED" for r in rows) else 0


def write_json(path: Path, setup: dict, rows: list[Row]) -> None:
    """The setup and the rows, replaced whole (written beside, then renamed)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({**setup, "rows": [dataclasses.asdict(r) for r in rows]}))
    partial.replace(path)


if __name__ == "__main__":
    sys.exit(main())
