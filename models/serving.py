"""Loading a trained adapter on its base model and generating text with it.

Used by evaluation and by the registry's pyfunc model, so what is served is what was evaluated.
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.loading import load_base


def load_adapted(
    base_model: str,
    adapter_dir: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    trust_remote_code: bool = False,
):
    """Base model + saved adapter, in eval mode; the tokenizer is the one saved with the adapter."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    base, _ = load_base(base_model, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).to(device)
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    model.eval()
    return model, tokenizer


@torch.no_grad()
def generate(
    model, tokenizer, prompts: list[str], *, max_new_tokens: int = 32, batch_size: int = 16
) -> list[str]:
    """Greedy continuation of each prompt (left-padded batches), special tokens removed."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        texts = prompts[start : start + batch_size]
        chunk = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in texts]
        width = max(len(ids) for ids in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, ids in enumerate(chunk):
            input_ids[i, width - len(ids) :] = torch.tensor(ids)
            mask[i, width - len(ids) :] = 1
        generated = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new_tokens = generated[:, width:]
        outputs.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return outputs
