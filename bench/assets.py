"""The demo assets the benchmarks run on, and the pipeline's training of the demo task."""

from __future__ import annotations

from bench.workers import ROOT, BenchError

DEMO_BASE = ROOT / "demo" / "base"  # shipped in git
DEMO_DATA = ROOT / "data"
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def require_demo_assets() -> None:
    if not (DEMO_BASE / "config.json").is_file() or not (DEMO_DATA / "train.jsonl").is_file():
        raise BenchError(
            f"demo assets missing ({DEMO_BASE}, {DEMO_DATA}): run `loraflow demo-assets` "
            "(or `make demo-assets`) first"
        )


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
