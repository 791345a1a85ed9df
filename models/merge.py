"""Merging an adapter into its base: a plain transformers model directory anyone can load."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from models.loading import load_base, offline_if_local


def merge_adapter(
    *,
    base_model: str,
    adapter_dir: str | Path,
    out_dir: str | Path,
    dtype: str = "auto",
    max_shard_size: str = "2GB",
    trust_remote_code: bool = False,
) -> list[Path]:
    """Merge the adapter into the base weights and save safetensors shards, config, tokenizer.

    The merge is done in fp32 and the result cast to `dtype` ('auto' = the base's own dtype
    from its config), so rounding happens once. Returns the written files, sorted.
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    target = _target_dtype(dtype, base_model, trust_remote_code)
    base, _ = load_base(base_model, dtype=torch.float32, trust_remote_code=trust_remote_code)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged = merged.to(target)
    merged.config.name_or_path = ""  # no local path of the exporting machine in the export
    out = Path(out_dir)
    shutil.rmtree(out, ignore_errors=True)  # no stale shards from an earlier export
    out.mkdir(parents=True)
    merged.save_pretrained(out, safe_serialization=True, max_shard_size=max_shard_size)
    AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(out)
    return sorted(p for p in out.rglob("*") if p.is_file())


def _target_dtype(dtype: str, base_model: str, trust_remote_code: bool) -> torch.dtype:
    if dtype != "auto":
        return getattr(torch, dtype)
    from transformers import AutoConfig

    # From the saved config: a model loaded in fp32 reports fp32 whatever its weights were.
    offline_if_local(base_model)
    config = AutoConfig.from_pretrained(base_model, trust_remote_code=trust_remote_code)
    configured = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(configured, str):
        configured = getattr(torch, configured, None)
    return configured if isinstance(configured, torch.dtype) else torch.float32
