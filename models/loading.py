"""Finding, checking and loading base models (local directories or hub ids)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch

from models.errors import LoraflowError


class ModelError(LoraflowError):
    """A problem with the base model; the message names the path or id."""


def is_local(base_model: str) -> bool:
    """Local when it exists or is written like a path; anything else is taken as a hub id."""
    return Path(base_model).exists() or base_model.startswith(("/", ".", "~"))


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


def layer_kinds(base_model: str, trust_remote_code: bool = False) -> dict[str, set[str]]:
    """Leaf module name (last component) -> its class names, from a skeleton on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    offline_if_local(base_model)
    config = AutoConfig.from_pretrained(base_model, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    kinds: dict[str, set[str]] = {}
    for name, module in model.named_modules():
        if name and not any(True for _ in module.children()):
            kind = "Linear" if isinstance(module, torch.nn.Linear) else type(module).__name__
            kinds.setdefault(name.rsplit(".", 1)[-1], set()).add(kind)
    return kinds


def linear_layer_names(base_model: str, trust_remote_code: bool = False) -> list[str]:
    """Names (last component) of the Linear layers of the model, built on the meta device."""
    return linear_names(layer_kinds(base_model, trust_remote_code))


def linear_names(kinds: dict[str, set[str]]) -> list[str]:
    """The Linear layer names of layer_kinds' answer, without the output head."""
    return sorted(n for n, k in kinds.items() if "Linear" in k and n != "lm_head")


def check_target_modules(
    targets: list[str] | str,
    available: list[str],
    other_layers: dict[str, set[str]] | None = None,
    method: str = "lora",
) -> None:
    """Every requested target must name at least one Linear layer of the model.

    other_layers (layer_kinds' answer) lets the message say when a target is a layer of another
    kind (an Embedding, a norm): every loraflow method adapts Linear layers only (PEFT's VeRA,
    for one, has no other layer type at all).
    """
    if targets == "all-linear":
        return
    other_layers = other_layers or {}
    missing = [t for t in targets if t.rsplit(".", 1)[-1] not in available]
    not_linear = [t for t in missing if t.rsplit(".", 1)[-1] in other_layers]
    listed = ", ".join(available)
    if not_linear:
        kinds = sorted({k for t in not_linear for k in other_layers[t.rsplit(".", 1)[-1]]})
        raise ModelError(
            f"adapter.target_modules {not_linear} are {'/'.join(kinds)} layers, not Linear; "
            f"adapter.method {method} adapts Linear layers only; its linear layers are: {listed}"
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


def canonical_base(base_model: str) -> str:
    """Absolute path for a local base (so the registry can find it from anywhere), else the id."""
    return str(Path(base_model).expanduser().resolve()) if is_local(base_model) else base_model
