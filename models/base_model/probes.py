"""What a base model's own code can do, found by asking the model, not a list of model names.

Packing (models.data.packing) relies on the model separating the examples of a row by their
restarting `position_ids`. Most architectures build a block-diagonal mask from them
(transformers' masking_utils); some derive positions and masks from the attention mask alone
(OPT, ALiBi models) and would let packed examples attend to each other, silently. So the check
runs the base's own code on two short sequences, packed into one row and alone, and compares
the logits. It runs the way the Trainer trains: without a KV cache (a cache also turns off the
packed-mask detection).

Whether packed examples see each other is decided by the model's code and config (how it builds
positions and the mask), not by its weights, so the check reads no weights: it runs a copy built
from the base's config with two layers (two, so that models alternating layer types, e.g.
Gemma 2's sliding and global attention, show both) and a vocabulary of 32, at random init in
fp32. For a 7B Llama that is ~0.4B parameters (1.6 GB) instead of 7B read in fp32 (28 GB).
"""

from __future__ import annotations

import torch

from models.base_model.loading import ModelError, offline_if_local
from models.data.packing import pack_batch

# Two short sequences of different lengths, within the probe copy's vocabulary.
_PROBE = ([3, 4, 5, 6, 7], [8, 9, 10])
PACKING_TOLERANCE = 1e-4
PROBE_LAYERS, PROBE_VOCAB = 2, 32


def packing_difference(model: torch.nn.Module) -> float:
    """Largest |logit| difference between each probe sequence packed in one row and alone."""
    features = [{"input_ids": list(ids), "labels": list(ids)} for ids in _PROBE]
    batch = pack_batch(features, row_len=sum(len(ids) for ids in _PROBE))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            packed = model(
                input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
            ).logits[0]
            offset, worst = 0, 0.0
            for ids in _PROBE:  # pack_batch places the longer one first
                alone = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
                got = packed[offset : offset + len(ids)]
                worst = max(worst, (got.float() - alone.float()).abs().max().item())
                offset += len(ids)
    finally:
        model.train(was_training)
    return worst


def probe_model(base_model: str, trust_remote_code: bool = False) -> torch.nn.Module:
    """The base's architecture, built from its config with PROBE_LAYERS layers and a
    PROBE_VOCAB-token vocabulary, random weights (seeded, global RNG untouched), fp32."""
    from transformers import AutoConfig, AutoModelForCausalLM

    offline_if_local(base_model)
    config = AutoConfig.from_pretrained(base_model, trust_remote_code=trust_remote_code)
    layers = min(PROBE_LAYERS, config.num_hidden_layers)
    config.num_hidden_layers = layers
    for key in ("layer_types", "block_types"):  # per-layer lists must match the layer count
        if isinstance(getattr(config, key, None), list):
            setattr(config, key, getattr(config, key)[:layers])
    config.vocab_size = PROBE_VOCAB
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if isinstance(getattr(config, key, None), int) and getattr(config, key) >= PROBE_VOCAB:
            setattr(config, key, None)  # an embedding's padding_idx must be inside the vocab
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(
            config, dtype=torch.float32, trust_remote_code=trust_remote_code
        )


def check_packing(base_model: str, trust_remote_code: bool = False) -> None:
    """training.packing is exact on this base, or the run is refused in one line."""
    model = probe_model(base_model, trust_remote_code)
    difference = packing_difference(model)
    if difference > PACKING_TOLERANCE:
        raise ModelError(
            f"training.packing: base_model {base_model} ({type(model).__name__}) lets packed "
            f"examples attend to each other (logits differ from each example alone by "
            f"{difference:.2g}): its attention ignores position_ids; set training.packing: false"
        )


def check_chunked_loss(base_model: str, trust_remote_code: bool = False) -> None:
    """training.chunked_loss: on is the model's own loss on this base, or the run is refused in
    one line (models.base_model.chunked_loss.refusal, asked of the probe copy: whether the
    head's output is post-processed is the architecture's code and config, not its weights)."""
    from models.base_model.chunked_loss import refusal

    model = probe_model(base_model, trust_remote_code)
    reason = refusal(model)
    if reason is not None:
        raise ModelError(
            f"training.chunked_loss: on is not exact for base_model {base_model} "
            f"({type(model).__name__}): {reason}; set training.chunked_loss: auto or off"
        )


def check_gradient_checkpointing(model: torch.nn.Module, base_model: str) -> None:
    """training.gradient_checkpointing is supported by the base's own code, or refused."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ModelError(
            f"training.gradient_checkpointing: base_model {base_model} "
            f"({type(model).__name__}) does not support gradient checkpointing; "
            "set training.gradient_checkpointing: false"
        )
