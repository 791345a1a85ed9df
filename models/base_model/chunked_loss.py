"""Causal LM loss without the whole logits tensor (`training.chunked_loss`).

A causal LM's logits are batch x sequence x vocabulary floats: with a 128k vocabulary, 4096
tokens hold 2 GiB of fp32 logits, and their gradient as much again, more than a LoRA adapter's
whole model state. Here the model's decoder runs once, and the head (the module at
`get_output_embeddings()`, called, not read: a LoRA-adapted lm_head trains too) is applied to
CHUNK_BYTES worth of tokens at a time together with the cross-entropy. In training each chunk
runs under `torch.utils.checkpoint`: only its hidden states and the summed loss are kept, its
logits are recomputed in the backward pass, so one chunk of logits is alive at a time instead of
all of them. Only labelled positions (label != -100 after the shift) reach the head: the loss of
the others is 0 in the model's own loss too, so assistant-only labels and packing cost no head
compute for prompt and pad tokens.

`auto` uses it where a full batch's logits are more than one chunk (`pays_off`); below that it
would save nothing.

The loss is the model's own (transformers' ForCausalLMLoss: fp32 cross-entropy, labels shifted
by one, summed and divided by the label count or the Trainer's `num_items_in_batch`) only where
the model's logits are exactly `head(decoder(...).last_hidden_state)`. Some architectures
post-process them (Gemma 2/3's final_logit_softcapping, Cohere's logit_scale, Granite's
logits_scaling, ...) or add to the loss (a mixture of experts' router loss with
output_router_logits). `refusal` finds out on the model itself: it names the config attributes
known to do so, and runs both paths on a few tokens and requires the same logits, so an
architecture not named here is still caught by its own code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
# Logits per chunk: 256 MiB of fp32 (about 520 tokens of a 128k vocabulary, 2,000 of 32k).
CHUNK_BYTES = 256 * 2**20
# Config attributes that change logits after the head (or add to the loss) where they are set.
POST_PROCESSING = (
    "final_logit_softcapping",
    "logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "output_multiplier",
    "lm_head_multiplier",
    "output_router_logits",
)
_PROBE_IDS = [[3, 4, 5, 6, 7, 8, 9, 10]]


def causal_lm_parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(decoder, head) of a causal LM, or of the one inside a PEFT model (adapter layers and all:
    PEFT injects them into the base model's modules)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    if decoder is base or head is None:
        raise ValueError(f"{type(base).__name__} has no separate decoder and output head")
    return decoder, head


def _config_of(model: torch.nn.Module):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def config_refusal(config) -> str | None:
    """The post-processing attributes set in a model's (text) config, as a reason, or None."""
    set_attrs = [
        f"{name}={getattr(config, name)}" for name in POST_PROCESSING if getattr(config, name, None)
    ]
    if set_attrs:
        return f"it post-processes its logits or loss ({', '.join(set_attrs)})"
    return None


def refusal(model: torch.nn.Module) -> str | None:
    """Why the chunked loss would not be the model's own loss on this model, or None when it is.

    Reads the config's post-processing attributes, then runs a few tokens through the model and
    through decoder + head (eval mode, no grad) and compares the logits, which must be equal.
    """
    config = _config_of(model)
    reason = config_refusal(config)
    if reason is not None:
        return reason
    try:
        decoder, head = causal_lm_parts(model)
    except (AttributeError, NotImplementedError, ValueError) as e:
        return f"its decoder and output head cannot be called apart ({e})"
    device = next(model.parameters()).device
    ids = torch.tensor(_PROBE_IDS, device=device) % int(config.vocab_size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            whole = model(input_ids=ids, use_cache=False).logits
            hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state
            parts = head(hidden)
    except (AttributeError, TypeError) as e:
        return f"its decoder and output head cannot be called apart ({e})"
    finally:
        model.train(was_training)
    if whole.shape != parts.shape or not torch.equal(whole, parts):
        return "its logits are not its output head applied to its decoder's last hidden state"
    return None


def chunk_tokens(vocab_size: int) -> int:
    """Tokens per chunk: CHUNK_BYTES of fp32 logits."""
    return max(1, CHUNK_BYTES // (4 * vocab_size))


def pays_off(model: torch.nn.Module, batch_tokens: int) -> bool:
    """Whether a full batch's logits are more than one chunk: below that the chunked path holds
    the same logits and only changes the order of the float sums (and so the adapter's bits:
    `auto` keeps the plain path there, and runs recorded before this option reproduce
    bit for bit)."""
    return batch_tokens > chunk_tokens(_config_of(model).vocab_size)


def wanted(setting: str, model: torch.nn.Module, batch_tokens: int) -> bool:
    """training.chunked_loss decided for this model and batch size: on, off, or (auto) where it
    pays off and is the model's own loss."""
    if setting != "auto":
        return setting == "on"
    return pays_off(model, batch_tokens) and refusal(model) is None


def _labelled(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The hidden states of the positions that have a label after the causal shift, and those
    labels (position t predicts label t + 1)."""
    shifted = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    keep = shifted != IGNORE_INDEX
    return hidden[keep], shifted[keep]


def _chunk_loss_sum(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor):
    logits = head(hidden).float()
    return F.cross_entropy(logits, labels, reduction="sum")


def loss_sum(
    hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor, vocab_size: int
) -> tuple[torch.Tensor, int]:
    """(summed cross-entropy over the labelled tokens, their count), one chunk of logits alive
    at a time in the forward and the backward pass."""
    hidden, labels = _labelled(hidden, labels)
    step = chunk_tokens(vocab_size)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, labels.numel(), step):
        piece, targets = hidden[start : start + step], labels[start : start + step]
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_loss_sum, head, piece, targets, use_reentrant=False)
        else:
            total = total + _chunk_loss_sum(head, piece, targets)
    return total, labels.numel()


def causal_lm_loss(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    num_items_in_batch: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """The model's own causal LM loss for `inputs` (with `labels`), computed chunk by chunk:
    the sum divided by num_items_in_batch where given (the Trainer's count over the whole
    accumulated batch), else the mean over this batch's labelled tokens."""
    decoder, head = causal_lm_parts(model)
    features = {k: v for k, v in inputs.items() if k != "labels"}
    hidden = decoder(**features).last_hidden_state
    total, count = loss_sum(hidden, head, inputs["labels"], _config_of(model).vocab_size)
    if num_items_in_batch is None:
        return total / max(count, 1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


@torch.no_grad()
def token_losses(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of each position against the next label (0 where that label is -100),
    batch x (sequence - 1), from one chunk of logits at a time."""
    decoder, head = causal_lm_parts(model)
    hidden = decoder(**inputs).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    out = torch.zeros(targets.shape, dtype=torch.float32, device=hidden.device)
    flat_hidden, flat_targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    keep = (flat_targets != IGNORE_INDEX).nonzero().squeeze(1)
    step = chunk_tokens(_config_of(model).vocab_size)
    flat_out = out.view(-1)
    for start in range(0, keep.numel(), step):
        at = keep[start : start + step]
        logits = head(flat_hidden[at]).float()
        flat_out[at] = F.cross_entropy(logits, flat_targets[at], reduction="none")
    return out
