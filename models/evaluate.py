"""Evaluation on the eval split: loss and perplexity on completions, and exact match."""

from __future__ import annotations

import math

import torch

from models.chat import prepare_tokenizer
from models.data import pad_batch, read_split, tokenize
from models.loading import load_base
from models.serving import generate, load_adapted
from models.specs import EvalSpec


@torch.no_grad()
def completion_loss(model, tokenizer, features: list[dict], batch_size: int) -> float:
    """Mean cross-entropy per completion token (prompt and padding excluded)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(features), batch_size):
        batch = pad_batch(features[start : start + batch_size], tokenizer.pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.size(-1)),
            targets.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        total += float(losses)
        count += int((targets != -100).sum())
    return total / max(count, 1)


def evaluate_model(model, tokenizer, spec: EvalSpec) -> dict[str, float]:
    """eval_loss, perplexity and exact_match (greedy output equals the completion, stripped;
    for chat the last assistant turn, answered from the turns before it). Plain text has no
    answer to match: its exact_match is 0 (the config refuses it as the promotion metric)."""
    data = spec.data
    examples = read_split(data.eval_path, data)[: spec.max_examples]
    features = tokenize(
        examples, tokenizer, data.max_seq_len, "truncate", train_on=data.train_on
    ).features
    loss = completion_loss(model, tokenizer, features, spec.batch_size)
    hits = 0
    if data.format != "text":
        answers = generate(
            model,
            tokenizer,
            [e.request() for e in examples],
            max_new_tokens=spec.max_new_tokens,
            batch_size=spec.batch_size,
            # Non-chat prompts are rendered already (an alpaca prompt is its full text).
            fmt="chat" if data.format == "chat" else "prompt_completion",
        )
        pairs = zip(answers, examples, strict=True)
        hits = sum(a.strip() == e.completion.strip() for a, e in pairs)
    return {
        "eval_loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "exact_match": hits / len(examples),
        "examples": float(len(examples)),
    }


def evaluate_candidates(
    candidates: dict[str, tuple[str, str | None]], spec: EvalSpec
) -> dict[str, dict[str, float]]:
    """Evaluate each named (base model, adapter dir or None) on the same eval split, in fp32."""
    report = {}
    for name, (base_model, adapter_dir) in candidates.items():
        if adapter_dir is None:
            model, tokenizer = load_base(
                base_model, device=spec.device, trust_remote_code=spec.trust_remote_code
            )
            model.eval()
        else:
            model, tokenizer = load_adapted(
                base_model,
                adapter_dir,
                device=spec.device,
                trust_remote_code=spec.trust_remote_code,
            )
        prepare_tokenizer(tokenizer, spec.data, base_model, spec.trust_remote_code)
        report[name] = evaluate_model(model, tokenizer, spec)
        del model
    return report
