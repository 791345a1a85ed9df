"""Finding, checking and loading base models (local directories or hub ids)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch

from models.base_model.paths import is_local
from models.errors import LoraflowError
from models.methods.base import LINEAR_KINDS


class ModelError(LoraflowError):
    """A problem with the base model; the message names the path or id."""


def preflight_base(base_model: str, trust_remote_code: bool = False) -> dict:
    """Check a local base model can be loaded safely, without loading weights; return config.json.

    Refuses pickle-only weights (safetensors is the default) and models needing their own code
    unless trust_remote_code is set.
    """
    if not is_local(base_model):
        return _hub_config(base_model)
    root = Path(base_model).expanduser()
    if not root.is_dir():
        raise ModelError(f"base_model {base_model}: directory not found")
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        raise ModelError(f"base_model {base_model}: no config.json in the directory")
    config = json.loads(cfg_path.read_text())
    if not any(root.glob("*.safetensors")):
        pickles = [p.name for p in root.iterdir() if p.suffix in (".bin", ".pt", ".pth")]
        what = f"only pickle weights ({', '.join(sorted(pickles))})" if pickles else "no weights"
        raise ModelError(f"base_model {base_model}: {what}; loraflow loads safetensors only")
    if config.get("auto_map") and not trust_remote_code:
        raise ModelError(
            f"base_model {base_model}: needs remote code (auto_map in config.json); "
            "set base_model_trust_remote_code: true only if you trust it"
        )
    return config


def _hub_config(model_id: str) -> dict:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_id).to_dict()
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"base_model {model_id}: not a local directory and not loadable from the hub ({first})"
        ) from None


# LINEAR_KINDS: the layer kinds PEFT adapts as linear layers, nn.Linear (fused ones such as
# Phi-3's qkv_proj or GPT-NeoX's query_key_value included) and transformers' Conv1D (GPT-2's
# c_attn, c_proj, c_fc: a linear layer storing its weight transposed); PEFT's all-linear takes
# exactly these.


def meta_model(base_model: str, trust_remote_code: bool = False):
    """The base model's skeleton on the meta device (no weights read or allocated)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    offline_if_local(base_model)
    config = AutoConfig.from_pretrained(base_model, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def kinds_of(model: torch.nn.Module) -> dict[str, set[str]]:
    """Leaf module name (last component) -> its kinds: Linear and Embedding for nn.Linear and
    nn.Embedding and their subclasses (the way PEFT dispatches), else the class name."""
    kinds: dict[str, set[str]] = {}
    for name, module in model.named_modules():
        if name and not any(True for _ in module.children()):
            if isinstance(module, torch.nn.Linear):
                kind = "Linear"
            elif isinstance(module, torch.nn.Embedding):
                kind = "Embedding"
            else:
                kind = type(module).__name__
            kinds.setdefault(name.rsplit(".", 1)[-1], set()).add(kind)
    return kinds


def layer_kinds(base_model: str, trust_remote_code: bool = False) -> dict[str, set[str]]:
    """Leaf module name (last component) -> its kinds (see kinds_of), from the meta skeleton."""
    return kinds_of(meta_model(base_model, trust_remote_code))


def linear_layer_names(base_model: str, trust_remote_code: bool = False) -> list[str]:
    """Names (last component) of the linear layers of the model, built on the meta device."""
    return linear_names(layer_kinds(base_model, trust_remote_code))


def linear_names(kinds: dict[str, set[str]]) -> list[str]:
    """The linear layer names (LINEAR_KINDS) of layer_kinds' answer, without the output head."""
    return sorted(n for n, k in kinds.items() if k & LINEAR_KINDS and n != "lm_head")


def _kinds_text(kinds: frozenset[str] | set[str]) -> str:
    extra = sorted(kinds - LINEAR_KINDS)
    return " and ".join(["Linear", *extra]) if kinds >= LINEAR_KINDS else "/".join(sorted(kinds))


def check_target_modules(
    targets: list[str] | str,
    available: list[str],
    other_layers: dict[str, set[str]] | None = None,
    method: str = "lora",
    adapts: frozenset[str] = LINEAR_KINDS,
) -> None:
    """Every requested target must name at least one layer the method can adapt.

    available: the model's linear layer names (linear_names), listed as the candidates.
    other_layers (layer_kinds' answer) lets the message say when a target is a layer of a kind
    the method does not adapt (a norm; an Embedding for methods that adapt linear layers only,
    VeRA for one); adapts: the layer kinds the method adapts (AdapterMethod.layer_kinds).
    """
    if targets == "all-linear":
        return
    other_layers = other_layers or {}
    leaf = {t: t.rsplit(".", 1)[-1] for t in targets}
    adaptable = {n for n, k in other_layers.items() if k <= adapts} | set(available)
    refused = [t for t in targets if leaf[t] in other_layers and leaf[t] not in adaptable]
    missing = [t for t in targets if leaf[t] not in adaptable and t not in refused]
    listed = ", ".join(available)
    what = _kinds_text(adapts)
    if refused:
        kinds = sorted({k for t in refused for k in other_layers[leaf[t]]} - adapts)
        raise ModelError(
            f"adapter.target_modules {refused} are {'/'.join(kinds)} layers, not {what}; "
            f"adapter.method {method} adapts {what} layers only; its linear layers are: {listed}"
        )
    if missing:
        raise ModelError(
            f"adapter.target_modules {missing} match no module of the base model; "
            f"its linear layers are: {listed}"
        )


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """'auto' means bf16 on a CUDA device that supports it, fp32 elsewhere."""
    if dtype == "auto":
        if device == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, dtype)


@contextlib.contextmanager
def cpu_threads(threads: int | None):
    """torch's intra-op threads set to `threads` for the block (None: leave as is), then restored.

    One thread per core is torch's default; for small models on a busy machine fewer threads
    can be much faster (each op is too short to amortise waiting for a descheduled thread).
    """
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def resolve_device(device: str) -> str:
    """'auto' means CUDA when available."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("training.device is cuda but no CUDA device is available")
    return device


def load_base(
    base_model: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    trust_remote_code: bool = False,
    **load_kwargs,
):
    """Load the base causal LM and its tokenizer (safetensors only; offline for local paths).

    load_kwargs go to from_pretrained (e.g. a quantization_config); a quantized model is placed
    on its device by the loader and is not moved afterwards.
    """
    from transformers import AutoModelForCausalLM

    offline_if_local(base_model)
    model = AutoModelForCausalLM.from_pretrained(
        base_model,
        dtype=dtype,
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        **({"device_map": {"": device}} if load_kwargs else {}),
        **load_kwargs,
    )
    if not load_kwargs:
        model = model.to(device)
    return model, load_tokenizer(base_model, trust_remote_code)


def load_tokenizer(base_model: str, trust_remote_code: bool = False):
    """The base model's tokenizer, with eos as the pad token where it has none."""
    from transformers import AutoTokenizer

    offline_if_local(base_model)
    tokenizer = AutoTokenizer.from_pretrained(base_model, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def offline_if_local(base_model: str) -> None:
    # A local base must never trigger a hub lookup (no network here, and none should be needed).
    if is_local(base_model):
        os.environ["HF_HUB_OFFLINE"] = "1"
