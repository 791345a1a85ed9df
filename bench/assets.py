"""The demo assets the benchmarks run on, and the pipeline's training of the demo task."""

from __future__ import annotations

import dataclasses

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


def lora_spec(*, steps: int, seed: int = 0, data: dict | None = None, **overrides):
    """The demo task as the pipeline trains it: LoRA r=8 on all linear layers, the demo config's
    data settings, learning rate and batch, on CPU. `data` replaces fields of the DataSpec,
    `overrides` fields of the TrainSpec (dataclasses.replace)."""
    from models.config.specs import DataSpec, TrainSpec
    from models.methods import AdapterSpec

    spec = TrainSpec(
        base_model=str(DEMO_BASE),
        data=DataSpec(path=str(DEMO_DATA), max_seq_len=64),  # the rest: config defaults
        method="lora",
        adapter=AdapterSpec(r=8, alpha=16.0, dropout=0.0, target_modules=TARGETS, seed=seed),
        max_steps=steps,
        learning_rate=3e-3,
        batch_size=16,
        device="cpu",
    )
    data_spec = dataclasses.replace(spec.data, **(data or {}))
    return dataclasses.replace(spec, data=data_spec, **overrides)


def train_lora(
    out,
    *,
    steps: int,
    seed: int = 0,
    data: dict | None = None,
    on_log=None,
    save: bool = True,
    callbacks: list | None = None,
    **overrides,
):
    """The pipeline's train_adapter on `lora_spec(steps=, seed=, data=, **overrides)`, saving to
    `out`; on_log, save and callbacks are train_adapter's run-only arguments."""
    from models.training.train import train_adapter

    spec = lora_spec(steps=steps, seed=seed, data=data, **overrides)
    return train_adapter(spec, output_dir=out, on_log=on_log, save=save, callbacks=callbacks)
