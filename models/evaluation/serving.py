"""Loading a trained adapter on its base model and generating text with it.

Used by evaluation and by the registry's pyfunc model, so what is served is what was evaluated;
requests are encoded by models.data.chat exactly as training encoded its prompts.
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.base_model.loading import load_base
from models.data.chat import bos_prefix, encode_request, turn_end


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
    model,
    tokenizer,
    prompts: list,
    *,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    fmt: str = "prompt_completion",
) -> list[str]:
    """Greedy answer to each request (left-padded batches), special tokens removed.

    A request is a prompt string, or for fmt chat a string (one user turn) or a list of
    messages; it is encoded as training encoded its prompts (data.chat.encode_request). A chat
    answer ends where the template ends an assistant turn.
    """
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id
    prefix = bos_prefix(tokenizer)
    stop_text = turn_end(tokenizer) if fmt == "chat" else ""
    stop_ids = [tokenizer.eos_token_id]
    if stop_text in tokenizer.all_special_tokens:  # e.g. <|im_end|>: stop there, not later
        stop_ids.append(tokenizer.convert_tokens_to_ids(stop_text))
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        requests = prompts[start : start + batch_size]
        chunk = [encode_request(tokenizer, r, fmt, prefix) for r in requests]
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
            eos_token_id=stop_ids if len(stop_ids) > 1 else stop_ids[0],
        )
        new_tokens = generated[:, width:]
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        outputs.extend(t.split(stop_text)[0] if stop_text else t for t in texts)
    return outputs
