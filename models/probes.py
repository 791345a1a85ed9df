"""What a base model's own code can do, found by asking the model, not a list of model names.

Packing (models.packing) relies on the model separating the examples of a row by their
restarting `position_ids`. Most architectures build a block-diagonal mask from them
(transformers' masking_utils); some derive positions and masks from the attention mask alone
(OPT, ALiBi models) and would let packed examples attend to each other, silently. So the check
runs the loaded base itself on two short sequences, packed into one row and alone, and compares
the logits. It runs the way the Trainer trains: without a KV cache (a cache also turns off the
packed-mask detection).
"""

from __future__ import annotations

import torch

from models.loading import ModelError, load_base
from models.packing import pack_batch

# Two short sequences of different lengths; ids 3.. exist in every vocabulary.
_PROBE = ([3, 4, 5, 6, 7], [8, 9, 10])
PACKING_TOLERANCE = 1e-4


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


def check_packing(base_model: str, trust_remote_code: bool = False) -> None:
    """training.packing is exact on this base, or the run is refused in one line."""
    from transformers.utils import logging

    # A check prints one line or nothing: no weight-loading progress bar on stderr.
    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        model, _ = load_base(base_model, dtype=torch.float32, trust_remote_code=trust_remote_code)
    finally:
        if shown:
            logging.enable_progress_bar()
    difference = packing_difference(model)
    if difference > PACKING_TOLERANCE:
        raise ModelError(
            f"training.packing: base_model {base_model} ({type(model).__name__}) lets packed "
            f"examples attend to each other (logits differ from each example alone by "
            f"{difference:.2g}): its attention ignores position_ids; set training.packing: false"
        )


def check_gradient_checkpointing(model: torch.nn.Module, base_model: str) -> None:
    """training.gradient_checkpointing is supported by the base's own code, or refused."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ModelError(
            f"training.gradient_checkpointing: base_model {base_model} "
            f"({type(model).__name__}) does not support gradient checkpointing; "
            "set training.gradient_checkpointing: false"
        )
