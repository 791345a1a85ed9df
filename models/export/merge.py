"""Merging an adapter into its base: a plain transformers model directory anyone can load.

The merge streams: the base's safetensors files are read one at a time (memory-mapped), each
tensor in the order of its bytes. An adapted layer's weight is taken to fp32, its update added
there with exactly the arithmetic of PEFT's `merge_and_unload` (models.export.layer_update), and the
result cast once to the target dtype; every other tensor is copied through (cast only when the
target dtype differs). Each tensor goes straight into its output file, whose header was
planned up front from the base's headers (models.export.shards), re-sharded to max_shard_size. So
memory holds one mapped base file, the adapter and one layer's fp32 working copies, whatever
the size of the model.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from models.base_model.loading import meta_model, offline_if_local
from models.base_model.paths import is_local
from models.errors import LoraflowError
from models.export.layer_update import FP32_COPIES, LayerUpdate, Workspace
from models.export.shards import (
    ShardWriter,
    TensorInfo,
    checkpoint_files,
    plan_shards,
    read_header,
    write_index,
)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PEFT's name for the wrapped model in saved adapter keys
PARTS = {
    "base_weight",
    "lora_A",
    "lora_B",
    "lora_embedding_A",
    "lora_embedding_B",
    "lora_magnitude_vector",
    "vera_lambda_b",
    "vera_lambda_d",
}


class MergeError(LoraflowError):
    """An adapter that cannot be merged into this base; the message names the file or layer."""


def read_adapter(adapter_dir: Path, conv1d: set[str]) -> tuple[list[LayerUpdate], dict]:
    """The layer updates of a saved PEFT adapter (LoRA and its variants, DoRA, VeRA), and the
    full weights it carries for some layers (PEFT saves an adapted embedding's own weight),
    by module name. conv1d: names of transformers Conv1D modules (weights stored transposed)."""
    from peft.utils.other import get_pattern_key
    from safetensors.torch import load_file

    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    kind = config.get("peft_type")
    if kind not in ("LORA", "VERA"):
        raise MergeError(f"{adapter_dir}: peft_type {kind!r} cannot be merged (LORA or VERA)")
    if config.get("lora_bias") or config.get("modules_to_save"):
        raise MergeError(f"{adapter_dir}: lora_bias / modules_to_save adapters are not supported")
    saved = {k: v.float() for k, v in load_file(str(adapter_dir / ADAPTER_WEIGHTS)).items()}
    shared = {k: saved.pop(f"base_model.{k}", None) for k in ("vera_A", "vera_B")}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in saved.items():
        name = key.removeprefix(PEFT_PREFIX)
        if name.endswith(".base_layer.weight"):  # a full weight (PEFT saves adapted embeddings)
            module, part = name.removesuffix(".base_layer.weight"), "base_weight"
        else:
            module, _, part = name.removesuffix(".weight").rpartition(".")
        if part not in PARTS:
            raise MergeError(f"{adapter_dir}: {key} is not a LoRA, DoRA or VeRA weight")
        parts.setdefault(module, {})[part] = tensor
    updates, full = [], {}
    for module, p in parts.items():
        if "base_weight" in p:
            full[module] = p.pop("base_weight")
        if not p:
            continue
        if kind == "VERA":
            updates.append(
                LayerUpdate(
                    module,
                    shared["vera_A"],
                    shared["vera_B"],
                    lambda_d=p["vera_lambda_d"],
                    lambda_b=p["vera_lambda_b"],
                    transposed=module in conv1d,
                )
            )
            continue
        embedding = "lora_embedding_A" in p
        a = p["lora_embedding_A" if embedding else "lora_A"]
        b = p["lora_embedding_B" if embedding else "lora_B"]
        r = a.shape[0]
        alpha_key = get_pattern_key(config.get("alpha_pattern", {}).keys(), module)
        alpha = config.get("alpha_pattern", {}).get(alpha_key, config["lora_alpha"])
        scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        magnitude = p.get("lora_magnitude_vector")
        if embedding and magnitude is not None:
            raise MergeError(f"{adapter_dir}: DoRA on an embedding ({module}) is not supported")
        transposed = embedding or module in conv1d
        updates.append(LayerUpdate(module, a, b, scaling, magnitude, transposed=transposed))
    return updates, full


def base_directory(base_model: str) -> Path:
    """The local directory holding the base's safetensors and config (hub ids: the cache)."""
    if is_local(base_model):
        return Path(base_model).expanduser()
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(base_model, allow_patterns=["*.safetensors", "*.json"]))


def _stored_keys(model, stored: list[str]) -> dict[str, list[str]]:
    """Parameter name -> the checkpoint keys that load into it, found with transformers' own
    renaming (legacy names such as GPT-NeoX's embed_out for lm_head, keys without the
    base_model_prefix as in the hub's GPT-2) and ties (a tied lm_head is stored as the
    embedding). Keys that a converter transforms (e.g. fused MoE experts) load into no single
    parameter and are left out: their layers cannot be merged here, only copied."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    params = model.state_dict()
    loads_into: dict[str, list[str]] = {}
    for key in stored:
        name, converted = rename_source_key(
            key, renamings, converters, model.base_model_prefix, params
        )
        name = key if name not in params and key in params else name
        if converted is None:
            loads_into.setdefault(name, []).append(key)
    by_id: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(param), []).append(name)
    keys: dict[str, list[str]] = {}
    for names in by_id.values():
        found = sorted({k for n in names for k in loads_into.get(n, [])})
        keys.update({n: found for n in names})
    return keys


@dataclass
class MergePlan:
    """What a streamed merge will write: output files with their tensors and the updates each
    stored tensor receives."""

    base_dir: Path
    shards: dict[str, list[TensorInfo]]
    updates: dict[str, list[LayerUpdate]]  # stored key -> updates, in module order
    full: dict[str, torch.Tensor]  # stored key -> the adapter's own copy of that weight
    target: torch.dtype


def plan_merge(
    *,
    base_model: str,
    adapter_dir: str | Path,
    dtype: str = "auto",
    max_shard_size: str = "2GB",
    trust_remote_code: bool = False,
) -> MergePlan:
    """Read headers, the adapter and the model's skeleton; check every adapted weight is in the
    base's files. Nothing is written, no base weight is read."""
    from transformers.utils.hub import convert_file_size_to_int

    base_dir = base_directory(base_model)
    skeleton = meta_model(str(base_dir), trust_remote_code)
    conv1d = {n for n, m in skeleton.named_modules() if type(m).__name__ == "Conv1D"}
    layers, full_weights = read_adapter(Path(adapter_dir), conv1d)
    tensors = [t for path in checkpoint_files(base_dir) for t in read_header(path)]
    stored = _stored_keys(skeleton, [t.name for t in tensors])
    order = {name: i for i, (name, _) in enumerate(skeleton.named_modules())}
    updates: dict[str, list[LayerUpdate]] = {}
    full: dict[str, torch.Tensor] = {}
    for layer in sorted(layers, key=lambda u: order.get(u.module, len(order))):
        for key in _keys_of(stored, layer.module, base_model):
            updates.setdefault(key, []).append(layer)
    for module, weight in full_weights.items():
        for key in _keys_of(stored, module, base_model):
            full[key] = weight
    target = _target_dtype(dtype, str(base_dir), trust_remote_code)
    planned = [
        TensorInfo(t.name, target if t.dtype.is_floating_point else t.dtype, t.shape, t.source)
        for t in tensors
    ]
    shards = plan_shards(planned, convert_file_size_to_int(max_shard_size))
    return MergePlan(base_dir, shards, updates, full, target)


def _keys_of(stored: dict[str, list[str]], module: str, base_model: str) -> list[str]:
    keys = stored.get(f"{module}.weight")
    if not keys:
        raise MergeError(
            f"base_model {base_model}: the adapter changes {module}.weight, which is not in the "
            "base's safetensors files; is this the adapter's base model?"
        )
    return keys


def stream_merge(plan: MergePlan, out_dir: str | Path) -> Iterator[Path]:
    """Write the merged checkpoint to out_dir, yielding each safetensors file (then the index)
    as soon as it is complete, so a caller can upload and delete it before the next."""
    from safetensors import safe_open

    out = Path(out_dir)
    adapted = [t for ts in plan.shards.values() for t in ts if t.name in plan.updates]
    workspace = Workspace(max((math.prod(t.shape) for t in adapted), default=0), plan.target)
    opened: dict[Path, object] = {}  # at most one base file mapped at a time
    for name, tensors in plan.shards.items():
        writer = ShardWriter(out / name, tensors)
        for info in tensors:
            if info.source not in opened:
                opened.clear()  # unmaps the previous file
                opened[info.source] = safe_open(str(info.source), "pt")
            tensor = plan.full.get(info.name)
            if tensor is None:
                tensor = opened[info.source].get_tensor(info.name)
            updates = plan.updates.get(info.name, [])
            writer.write(info.name, workspace.merged(tensor, updates, info.dtype))
            del tensor
        writer.close()
        yield out / name
    opened.clear()
    index = write_index(out, plan.shards)
    if index:
        yield index


def write_model_files(
    base_dir: Path, adapter_dir: Path, out: Path, target: torch.dtype, trust_remote_code: bool
) -> None:
    """config.json (in the target dtype, no local path), generation config, tokenizer."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    config = AutoConfig.from_pretrained(str(base_dir), trust_remote_code=trust_remote_code)
    config.dtype = target
    config.name_or_path = ""  # no local path of the exporting machine in the export
    config.save_pretrained(out)
    try:
        generation = GenerationConfig.from_pretrained(str(base_dir))
    except OSError:
        generation = GenerationConfig.from_model_config(config)
    generation.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(out)


def export_files(
    *,
    base_model: str,
    adapter_dir: str | Path,
    out_dir: str | Path,
    dtype: str = "auto",
    max_shard_size: str = "2GB",
    trust_remote_code: bool = False,
) -> Iterator[Path]:
    """The merged model written to out_dir file by file (see stream_merge), the config and
    tokenizer files after the weights. Checks everything before out_dir is touched."""
    plan = plan_merge(
        base_model=base_model,
        adapter_dir=adapter_dir,
        dtype=dtype,
        max_shard_size=max_shard_size,
        trust_remote_code=trust_remote_code,
    )
    out = Path(out_dir)
    shutil.rmtree(out, ignore_errors=True)  # no stale shards from an earlier export
    out.mkdir(parents=True)
    yield from stream_merge(plan, out)
    before = set(out.iterdir())
    write_model_files(plan.base_dir, Path(adapter_dir), out, plan.target, trust_remote_code)
    yield from sorted(set(out.iterdir()) - before)


def merge_adapter(**kwargs) -> list[Path]:
    """Merge the adapter into the base weights and save safetensors shards, config, tokenizer
    (arguments of export_files). Returns the written files, sorted."""
    return sorted(export_files(**kwargs))


def export_peak_bytes(largest_file: int, largest_adapted: int, adapter_bytes: int) -> int:
    """Estimated peak memory of a streamed merge: one mapped base file, the adapter (fp32) and
    the fp32 working copies of the largest adapted weight (largest_adapted elements)."""
    return largest_file + adapter_bytes + FP32_COPIES * 4 * largest_adapted


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
