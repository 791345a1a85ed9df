"""Loading a trained adapter on its base model and generating text with it.

Used by evaluation and by the registry's pyfunc model, so what is served is what was evaluated;
requests are encoded by models.data.chat exactly as training encoded its prompts.
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.base_model.loading import load_base
from models.data.chat import bos_prefix, encode_request, turn_end
from models.data.formats import DataError

# The named fields a served request carries, by the data.format the adapter was trained with;
# the registered pyfunc's signature declares them (prompt_completion and text take bare strings).
# A chat request is a `prompt` (one user turn) or `messages` (a conversation); a bare list of
# messages arrives as a table with one message per row, hence `role` and `content`.
REQUEST_FIELDS = {
    "chat": ("prompt", "messages", "role", "content"),
    "alpaca": ("prompt", "instruction", "input"),
}


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


def _cell(value):
    """A table cell as plain Python: None for what a table leaves empty (None, NaN)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    return value.tolist() if hasattr(value, "tolist") else value


def requests_from_rows(rows: list[dict], fmt: str) -> list:
    """The requests in a table of named fields (REQUEST_FIELDS[fmt]), one per row: a `prompt`
    string, chat `messages`, or alpaca `instruction` (and `input`); rows of `role` and
    `content` are one conversation, a message per row. DataError naming the row otherwise."""
    fields = REQUEST_FIELDS[fmt]
    rows = [{k: _cell(v) for k, v in row.items() if k in fields} for row in rows]
    rows = [{k: v for k, v in row.items() if v is not None} for row in rows]
    if fmt == "chat" and any("role" in row for row in rows):
        if any(set(row) - {"role", "content"} for row in rows):
            raise DataError("a request with role/content rows is one conversation: no other field")
        return [[{"role": row.get("role"), "content": row.get("content", "")} for row in rows]]
    requests = []
    for i, row in enumerate(rows):
        kinds = [f for f in ("prompt", "messages", "instruction") if f in row]
        if len(kinds) != 1 or ("input" in row and kinds != ["instruction"]):
            raise DataError(f"request {i}: {_takes(fmt)}, got fields {sorted(row) or 'none'}")
        if kinds == ["messages"]:
            requests.append([dict(m) for m in row["messages"]])
        elif kinds == ["instruction"]:
            requests.append({k: row[k] for k in ("instruction", "input") if k in row})
        else:
            requests.append(row["prompt"])
    if not requests:
        raise DataError(f"no request: {_takes(fmt)} (a bare string has no name: send prompt)")
    return requests


def _takes(fmt: str) -> str:
    if fmt == "chat":
        return "a chat adapter takes one of prompt (a string) or messages ([{role, content}])"
    return "an alpaca adapter takes one of prompt (a string) or instruction (and input)"
