"""Evaluation on the eval split: loss and perplexity on completions, and the text metrics of
evaluation.metrics (models.evaluation.metrics), overall and per slice of evaluation.slice_field."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from models.base_model.chunked_loss import token_losses, wanted
from models.base_model.loading import load_base, resolve_device
from models.config.specs import EvalSpec
from models.data.chat import prepare_tokenizer
from models.data.formats import read_rows, where
from models.data.prepared import eval_features
from models.data.splits import pad_batch, read_split
from models.evaluation.harness import harness_scores, task_manager
from models.evaluation.metrics import resolve, score, slice_key, sliced
from models.evaluation.serving import generate, load_adapted


@torch.no_grad()
def completion_losses(
    model, tokenizer, features: list[dict], batch_size: int, chunked: bool = False
) -> list[tuple[float, int]]:
    """Per example: summed cross-entropy over its completion tokens, and their count (prompt
    and padding excluded). chunked: from one chunk of logits at a time (the same figures
    without batch x sequence x vocabulary logits; models.base_model.chunked_loss)."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(features), batch_size):
        batch = pad_batch(features[start : start + batch_size], tokenizer.pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        targets = batch["labels"][:, 1:]
        if chunked:
            losses = token_losses(model, inputs, batch["labels"])
        else:
            logits = model(**inputs).logits
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().transpose(1, 2),
                targets,
                ignore_index=-100,
                reduction="none",
            )
        counts = (targets != -100).sum(dim=1)
        out += [(float(s), int(c)) for s, c in zip(losses.sum(dim=1), counts, strict=True)]
    return out


def completion_loss(
    model, tokenizer, features: list[dict], batch_size: int, chunked: bool = False
) -> float:
    """Mean cross-entropy per completion token over all examples."""
    return _mean_loss(completion_losses(model, tokenizer, features, batch_size, chunked))


def _mean_loss(losses: list[tuple[float, int]]) -> float:
    return sum(s for s, _ in losses) / max(sum(c for _, c in losses), 1)


def slices_of(spec: EvalSpec, lines: list[int]) -> list[str] | None:
    """The slice of each eval example (by its line or row), or None without a slice field."""
    if not spec.slice_field:
        return None
    path = Path(spec.data.eval_path)
    keys = {n: slice_key(spec.slice_field, obj, where(path, n)) for n, obj in read_rows(path)}
    return [keys[n] for n in lines]


def score_subset(
    spec: EvalSpec,
    losses: list[tuple[float, int]],
    predictions: list[str] | None,
    references: list[str],
) -> dict[str, float]:
    """eval_loss, perplexity and each metric of spec.metrics over one set of examples."""
    loss = _mean_loss(losses)
    figures = {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0))}
    for metric in map(resolve, spec.metrics):
        # Plain text has no answer to match: its text metrics are 0 (the config refuses them
        # in the promotion gate).
        figures[metric.name] = (
            0.0 if predictions is None else score(metric, predictions, references)
        )
    figures["examples"] = float(len(references))
    return figures


def evaluate_model(
    model, tokenizer, spec: EvalSpec, answers: list[str] | None = None
) -> dict[str, float]:
    """eval_loss, perplexity and spec.metrics over the greedy answers (stripped) against the
    completions (stripped; for chat the last assistant turn, answered from the turns before
    it); with spec.slice_field, each of them again per slice as `<metric>/<slice>`. The answers
    themselves are appended to `answers` where one is given (none for data.format text)."""
    data = spec.data
    examples = read_split(data.eval_path, data)[: spec.max_examples]
    features = eval_features(data, tokenizer, len(examples))
    chunked = wanted(spec.chunked_loss, model, spec.batch_size * data.max_seq_len)
    losses = completion_losses(model, tokenizer, features, spec.batch_size, chunked)
    references = [e.completion.strip() for e in examples]
    predictions = None
    if data.format != "text":
        generated = generate(
            model,
            tokenizer,
            [e.request() for e in examples],
            max_new_tokens=spec.max_new_tokens,
            batch_size=spec.batch_size,
            # Non-chat prompts are rendered already (an alpaca prompt is its full text).
            fmt="chat" if data.format == "chat" else "prompt_completion",
        )
        predictions = [a.strip() for a in generated]
        if answers is not None:
            answers.extend(predictions)
    report = score_subset(spec, losses, predictions, references)
    slices = slices_of(spec, [e.line for e in examples])
    for value in sorted(set(slices or [])):
        at = [i for i, s in enumerate(slices) if s == value]
        part = score_subset(
            spec,
            [losses[i] for i in at],
            None if predictions is None else [predictions[i] for i in at],
            [references[i] for i in at],
        )
        report.update({sliced(k, value): v for k, v in part.items()})
    return report


def split_slices(figures: dict[str, float]) -> dict[str | None, dict[str, float]]:
    """A model's report as {None: overall figures, slice: that slice's figures, ...}."""
    parts: dict[str | None, dict[str, float]] = {None: {}}
    for key, value in figures.items():
        metric, _, part = key.partition("/")
        parts.setdefault(part or None, {})[metric] = value
    return parts


def evaluate_candidates(
    candidates: dict[str, tuple[str, str | None]],
    spec: EvalSpec,
    answers: dict[str, list[str]] | None = None,
) -> dict[str, dict[str, float]]:
    """Evaluate each named (base model, adapter dir or None) on the same eval split, in fp32,
    on spec.device ("auto": CUDA where there is one), and on the lm-eval tasks of
    spec.lm_eval (models.evaluation.harness) where any are named; with `answers`, each one's
    greedy answers go to answers[name], in eval-split order."""
    device = resolve_device(spec.device)
    tasks = task_manager(spec.lm_eval) if spec.lm_eval.tasks else None
    report = {}
    for name, (base_model, adapter_dir) in candidates.items():
        if adapter_dir is None:
            model, tokenizer = load_base(
                base_model, device=device, trust_remote_code=spec.trust_remote_code
            )
            model.eval()
        else:
            model, tokenizer = load_adapted(
                base_model,
                adapter_dir,
                device=device,
                trust_remote_code=spec.trust_remote_code,
            )
        prepare_tokenizer(tokenizer, spec.data, base_model, spec.trust_remote_code)
        kept = None if answers is None else answers.setdefault(name, [])
        report[name] = evaluate_model(model, tokenizer, spec, kept)
        if tasks is not None:
            report[name].update(
                harness_scores(model, tokenizer, spec.lm_eval, spec.batch_size, tasks)
            )
        del model
    return report


def side_by_side(spec: EvalSpec, answers: dict[str, list[str]], n: int) -> list[dict[str, str]]:
    """The first n eval examples as a reviewer reads them: the prompt (for chat, the last user
    turn), the expected answer, then each candidate's answer (base, adapter, champion)."""
    examples = read_split(spec.data.eval_path, spec.data)[: min(n, spec.max_examples or n)]
    rows = []
    for i, example in enumerate(examples):
        request = example.request()
        prompt = request if isinstance(request, str) else request[-1]["content"]
        row = {"prompt": prompt.strip(), "expected": example.completion.strip()}
        row.update({name: said[i] for name, said in answers.items() if i < len(said)})
        rows.append(row)
    return rows
