"""Which loss path a training takes (`training.chunked_loss`), and the Trainer that takes it."""

from __future__ import annotations

import torch
from transformers import Trainer

from models.base_model.chunked_loss import causal_lm_loss, wanted


def use_chunked_loss(
    setting: str,
    model: torch.nn.Module,
    batch_tokens: int,
    world_size: int = 1,
    kernels: str = "none",
) -> bool:
    """auto: on where a full batch (batch_tokens) holds more than one chunk of logits and the
    chunked loss is the model's own (models.base_model.chunked_loss.pays_off, refusal), in a
    single process without Liger; on: always (the checks refused a base where it is
    not exact, the config refuses it with num_processes > 1 or kernels: liger); off: never.
    Data-parallel training keeps the model's own forward (DDP synchronises the gradients of what
    runs through its wrapper's forward), and Liger fuses the head and the loss itself."""
    if setting == "off" or world_size > 1 or kernels != "none":
        return False
    return wanted(setting, model, batch_tokens)


class ChunkedLossTrainer(Trainer):
    """The Hugging Face Trainer with the causal LM loss computed one chunk of logits at a time
    (models.base_model.chunked_loss.causal_lm_loss); everything else is the Trainer's.

    The loss is divided by the Trainer's `num_items_in_batch` (the labelled tokens of the whole
    accumulated batch), as transformers' own loss is, so it is already scaled for gradient
    accumulation (`loss_is_scaled_for_ga`, the Trainer's documented switch for a custom loss).
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:  # only prediction asks for outputs; loraflow's Trainer never predicts
            return super().compute_loss(model, inputs, True, num_items_in_batch)
        self.loss_is_scaled_for_ga = num_items_in_batch is not None
        unwrapped = self.accelerator.unwrap_model(model)
        return causal_lm_loss(unwrapped, inputs, num_items_in_batch)
