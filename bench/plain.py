"""The baseline a user would otherwise write: transformers Trainer + PEFT, nothing of loraflow's
training code; its settings are read from the same TrainSpec as the pipeline's.

Same model, data, tokens, batch, steps and optimizer settings as the pipeline's train task; the
data is tokenized the same way (prompt + completion + eos, loss on the completion; for chat data
the template's rendering with the loss on the assistant's turn, as a user would write it) so that
both see identical batches. Tokens/s counts real (non-padding) tokens over `trainer.train()`.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models.config.specs import TrainSpec


def tokenize_jsonl(path, tokenizer, max_seq_len: int) -> list[dict]:
    """prompt + completion + eos, prompt labels -100, cut at max_seq_len."""
    features = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
            completion = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
            ids = prompt + completion + [tokenizer.eos_token_id]
            labels = [-100] * len(prompt) + completion + [tokenizer.eos_token_id]
            features.append({"input_ids": ids[:max_seq_len], "labels": labels[:max_seq_len]})
    return features


def tokenize_chat_jsonl(path, tokenizer, max_seq_len: int) -> list[dict]:
    """The conversation as the tokenizer's chat template writes it, loss on the last (assistant)
    turn only: the prompt is the template's rendering up to that turn with the generation prompt,
    an EOS is appended where the template's turn does not end with one; cut at max_seq_len."""
    features = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            messages = json.loads(line)["messages"]
            full = tokenizer.apply_chat_template(messages, tokenize=False)
            head = tokenizer.apply_chat_template(
                messages[:-1], tokenize=False, add_generation_prompt=True
            )
            ids = tokenizer(full, add_special_tokens=False)["input_ids"]
            prompt = tokenizer(head, add_special_tokens=False)["input_ids"]
            labels = [-100] * len(prompt) + ids[len(prompt) :]
            if tokenizer.eos_token_id not in ids[len(prompt) :]:
                ids, labels = ids + [tokenizer.eos_token_id], labels + [tokenizer.eos_token_id]
            features.append({"input_ids": ids[:max_seq_len], "labels": labels[:max_seq_len]})
    return features


def train_plain(
    spec: TrainSpec, *, output_dir: str, torch_compile: bool = False, callbacks: list | None = None
) -> dict:
    """Train LoRA with a plain Trainer on the spec's base, train split, tokens, batch, steps,
    optimizer schedule and LoRA settings (its other fields are the pipeline's own); returns
    tokens, seconds, tokens/s and the final loss.

    torch_compile and callbacks go to the Trainer as they are (the compile trial uses them)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    adapter = spec.adapter
    tokenizer = AutoTokenizer.from_pretrained(spec.base_model)
    model = AutoModelForCausalLM.from_pretrained(
        spec.base_model, dtype=torch.bfloat16 if bf16 else torch.float32
    )
    tokenize = tokenize_chat_jsonl if spec.data.format == "chat" else tokenize_jsonl
    features = tokenize(spec.data.train_path, tokenizer, spec.data.max_seq_len)
    set_seed(adapter.seed)
    model = get_peft_model(
        model,
        LoraConfig(
            r=adapter.r,
            lora_alpha=adapter.alpha,
            lora_dropout=adapter.dropout,
            target_modules=adapter.target_modules,
            task_type="CAUSAL_LM",
        ),
    )
    pad = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    tokens = {"seen": 0}

    def collate(batch):
        tokens["seen"] += sum(len(f["input_ids"]) for f in batch)
        return pad(batch)

    args = TrainingArguments(
        output_dir=output_dir,
        max_steps=spec.max_steps,
        per_device_train_batch_size=spec.batch_size,
        learning_rate=spec.learning_rate,
        warmup_steps=spec.warmup_steps,
        lr_scheduler_type=spec.lr_scheduler,
        logging_steps=spec.logging_steps,
        save_strategy="no",
        report_to="none",
        seed=adapter.seed,
        bf16=bf16,
        use_cpu=not cuda,
        remove_unused_columns=False,
        torch_compile=torch_compile,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=features,
        data_collator=collate,
        callbacks=callbacks,
    )
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    return {
        "tokens": tokens["seen"],
        "seconds": seconds,
        "tokens_per_second": tokens["seen"] / seconds,
        "train_loss": float(output.training_loss),
    }
