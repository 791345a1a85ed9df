"""Deterministic demo assets: a tiny Llama base model and an instruction dataset it cannot solve.

The demo exists so a loraflow user can watch a LoRA fine-tune produce *real* learning on a CPU:

* `build_demo_base_model` trains a byte-level BPE tokenizer and briefly pretrains a small
  Llama-architecture causal LM on generic template text. The text never contains the demo task,
  so the base model is a fluent-ish LM that scores ~0 exact match on it.
* `build_demo_data` writes train/eval JSONL for a word-manipulation task (first / last word,
  reverse the words) whose answers are checked by exact string match and whose rule generalises to
  word sequences never seen in training.

Both builders are deterministic to the byte: same arguments, same sha256 for every written file,
across processes. That is why this module seeds everything locally, pins the torch thread count
during training, sorts JSON keys and never writes paths or timestamps.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)  # ids 0, 1, 2 in this order

# --- vocabulary -------------------------------------------------------------------------------
# Plain lowercase English words. Every one is frequent in the generic text, so the BPE tokenizer
# learns it as a single token (with its leading space): task answers are then a few tokens long.

NOUNS = (
    "cat", "dog", "sun", "moon", "star", "tree", "river", "house", "apple", "bird",
    "fish", "boat", "car", "road", "hill", "lake", "book", "door", "cup", "hat",
    "king", "queen", "child", "horse", "cow", "rain", "snow", "wind", "fire", "stone",
    "bread", "milk", "ship", "city", "field", "garden", "window", "table", "chair", "lamp",
    "box", "key", "ring", "bell", "song", "game", "ball", "shoe", "coat", "bag",
    "egg", "cake", "leaf", "rose", "farm", "bridge", "tower", "train", "clock", "map",
)  # fmt: skip
ADJECTIVES = (
    "red", "blue", "green", "big", "small", "old", "new", "quick", "slow", "happy",
    "sad", "warm", "cold", "dark", "bright", "soft", "hard", "tall", "short", "long",
    "young", "quiet", "loud", "clean", "wild", "sweet", "gold", "white", "black", "brown",
)  # fmt: skip
VERBS = (
    "sees", "likes", "finds", "takes", "makes", "wants", "holds", "helps", "calls", "meets",
    "moves", "opens", "paints", "keeps", "brings", "follows",
)  # fmt: skip
NAMES = ("Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Henry", "Ivy", "Jack")
NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

# Words the task draws its inputs from (single tokens, order fixed so sampling is deterministic).
TASK_WORDS = NOUNS + ADJECTIVES


# --- the demo task -------------------------------------------------------------------------------


def _first(words: Sequence[str]) -> list[str]:
    return [words[0]]


def _last(words: Sequence[str]) -> list[str]:
    return [words[-1]]


def _reverse(words: Sequence[str]) -> list[str]:
    return list(reversed(words))


# Rule name -> (instruction shown in the prompt, function from input words to answer words).
RULES: dict[str, tuple[str, Callable[[Sequence[str]], list[str]]]] = {
    "first": ("First word of", _first),
    "last": ("Last word of", _last),
    "reverse": ("Reverse the words", _reverse),
}
MIN_WORDS, MAX_WORDS = 3, 5
# Word lists in the generic text are longer than task inputs: more copy targets per sentence.
ECHO_MIN_WORDS, ECHO_MAX_WORDS = 3, 5


def format_prompt(instruction: str, words: Sequence[str]) -> str:
    """The prompt for one example; the model must continue it with the answer."""
    return f"{instruction}: {' '.join(words)}\nAnswer:"


def format_completion(answer: Sequence[str]) -> str:
    """The completion: the answer words, each preceded by a space (single BPE tokens)."""
    return "".join(f" {w}" for w in answer)


def _sample_examples(rng: random.Random, rules: Sequence[str]) -> Iterator[tuple[tuple, dict]]:
    """Endless stream of (key, example); the key identifies the word sequence and rule."""
    while True:
        rule = rules[rng.randrange(len(rules))]
        n = rng.randint(MIN_WORDS, MAX_WORDS)
        words = tuple(rng.sample(TASK_WORDS, n))  # distinct words: "reverse" is unambiguous
        instruction, fn = RULES[rule]
        example = {
            "prompt": format_prompt(instruction, words),
            "completion": format_completion(fn(words)),
        }
        yield (rule, words), example


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    """One sorted-key JSON object per line, "\\n" endings: byte-identical across runs."""
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")


def build_demo_data(
    out_dir: str | Path,
    *,
    seed: int = 0,
    n_train: int = 2000,
    n_eval: int = 200,
    rules: Sequence[str] = tuple(RULES),
) -> dict:
    """Write `train.jsonl` and `eval.jsonl` for the demo task into `out_dir`.

    Each line is `{"completion": ..., "prompt": ...}`. Eval examples are drawn first and no eval
    word sequence appears in train under any rule, so eval measures generalisation, not recall.
    Returns the number of examples written per split.
    """
    unknown = [r for r in rules if r not in RULES]
    if unknown or not rules:
        raise ValueError(f"unknown rules {unknown}; choose from {sorted(RULES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    # Sequences are compared ignoring the rule: eval never reuses a train word sequence at all.
    seen: set[tuple[str, ...]] = set()
    splits: dict[str, list[dict]] = {"eval": [], "train": []}
    targets = {"eval": n_eval, "train": n_train}
    stream = _sample_examples(rng, list(rules))
    for split in ("eval", "train"):
        while len(splits[split]) < targets[split]:
            (_, words), example = next(stream)
            if words in seen:
                continue
            seen.add(words)
            splits[split].append(example)
    _write_jsonl(out / "train.jsonl", splits["train"])
    _write_jsonl(out / "eval.jsonl", splits["eval"])
    return {"train": n_train, "eval": n_eval}


# --- generic pretraining text ---------------------------------------------------------------------


def _generic_sentence(rng: random.Random, topic: str) -> str:
    """One template sentence; `topic` is a noun the document keeps returning to."""
    c = rng.choice
    noun, noun2, adj, adj2 = c(NOUNS), c(NOUNS), c(ADJECTIVES), c(ADJECTIVES)
    templates = (
        f"The {adj} {topic} {c(VERBS)} the {noun}.",
        f"A {noun} is {adj}.",
        f"The {topic} is {adj} and {adj2}.",
        f"{c(NAMES)} {c(VERBS)} a {adj} {noun} near the {noun2}.",
        f"{c(NAMES)} has {c(NUMBERS)} {adj} {noun}s.",
        f"My {topic} and your {noun} are {adj}.",
        f"The first {noun} was {adj} and the last {noun2} was {adj2}.",
        f"{c(NAMES)} asked a question about the {topic}.",
        f"The answer was in the {adj} book.",
        f"{c(NAMES)} wrote the words on the {noun} in order.",
        f"We saw a {noun}, a {noun2} and a {adj} {topic}.",
        f"Every word of the old song was about the {topic}.",
        f"Then the {topic} went back to the {noun2}.",
        f"Look at the {adj} {topic}!",
        f"Is the {noun} {adj}? Yes, the {noun} is {adj}.",
        # Sentence-initial uses of the instruction words, so they are known tokens in context.
        f"Answer the question about the {topic}, {c(NAMES)}.",
        f"First, {c(NAMES)} {c(VERBS)} the {topic}.",
        f"Last, the {topic} {c(VERBS)} a {noun}.",
        f"Reverse the {adj} {noun} out of the {noun2}.",
        f"Words like {noun} and {noun2} are short.",
        f"{c(NAMES)} said: the {topic} is {adj}.",
    )
    return templates[rng.randrange(len(templates))]


def _echo_sentence(rng: random.Random) -> str:
    """A word list said twice: plain text that teaches the model to copy from its context.

    Copying is the skill the demo task builds on (first / last / reversed words); the task
    itself (picking or reordering words on request) never appears.
    """
    words = " ".join(rng.sample(TASK_WORDS, rng.randint(ECHO_MIN_WORDS, ECHO_MAX_WORDS)))
    a, b = rng.sample(NAMES, 2)
    templates = (
        f"{a} said: {words}. {b} said it again: {words}.",
        f"{a} wrote {words} on the board, and {b} wrote {words} too.",
        f"The song goes {words}, and then {words} once more.",
    )
    return templates[rng.randrange(len(templates))]


def generic_documents(seed: int, n_docs: int, echo_rate: float = 0.3) -> list[str]:
    """Short multi-sentence documents of template text (never the demo task's format)."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        topic = rng.choice(NOUNS)
        sentences = [
            _echo_sentence(rng) if rng.random() < echo_rate else _generic_sentence(rng, topic)
            for _ in range(rng.randint(3, 7))
        ]
        sep = "\n" if rng.random() < 0.3 else " "
        docs.append(sep.join(sentences))
    return docs


def _task_like_lines() -> list[str]:
    """Instruction vocabulary (not examples) so the tokenizer has tokens for it."""
    lines = [f"{instruction}: Answer:" for instruction, _ in RULES.values()]
    lines += [" ".join(TASK_WORDS), "\n".join(TASK_WORDS)]
    return lines


# --- tokenizer ----------------------------------------------------------------------------------


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE without an added prefix space, so decode(encode(text)) == text exactly."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        # No automatic <s>/</s>: loraflow tokenizes prompt and completion separately and appends
        # eos itself, so text must encode to the same ids alone or concatenated.
        add_bos_token=False,
        add_eos_token=False,
        model_max_length=256,
    )


# --- pretraining ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _deterministic_torch(seed: int, num_threads: int) -> Iterator[None]:
    """Seed torch, pin the thread count (it changes float reduction order) and restore after."""
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)


def _pack(tok: PreTrainedTokenizerFast, docs: Sequence[str], block: int) -> torch.Tensor:
    """Concatenate `doc </s>` for every document and cut into rows of `block` tokens.

    No `<s>`: fine-tuning feeds prompts without one, so the model should not depend on it.
    """
    ids: list[int] = []
    for enc in tok(list(docs)).input_ids:
        ids.extend(enc)
        ids.append(tok.eos_token_id)
    n_rows = len(ids) // block
    return torch.tensor(ids[: n_rows * block], dtype=torch.long).view(n_rows, block)


def _pretrain(
    model: LlamaForCausalLM,
    rows: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> list[float]:
    """Plain AdamW with linear warmup + cosine decay; returns the per-step losses."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    losses = []
    order = torch.randperm(len(rows), generator=gen)
    pos = 0
    for _ in range(steps):
        if pos + batch_size > len(order):  # next epoch, fresh deterministic shuffle
            order, pos = torch.randperm(len(rows), generator=gen), 0
        batch = rows[order[pos : pos + batch_size]]
        pos += batch_size
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


def _model_config(
    tok: PreTrainedTokenizerFast, hidden_size: int, num_layers: int, head_dim: int = 32
) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 8 // 3 // 16 * 16,  # SwiGLU's usual ~8/3 ratio
        num_hidden_layers=num_layers,
        num_attention_heads=hidden_size // head_dim,
        num_key_value_heads=hidden_size // head_dim,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def build_demo_base_model(
    out_dir: str | Path,
    *,
    seed: int = 0,
    pretrain_steps: int = 300,
    hidden_size: int = 192,
    num_layers: int = 4,
    vocab_size: int = 1024,
    n_docs: int = 20000,
    block_size: int = 128,
    batch_size: int = 16,
    lr: float = 3e-3,
    num_threads: int = 2,
) -> Path:
    """Train a tokenizer, pretrain a small Llama on generic text, save both to `out_dir`.

    The directory loads with `AutoModelForCausalLM.from_pretrained` and
    `AutoTokenizer.from_pretrained`. `num_threads` is pinned during training because the float
    summation order (hence the weights' bytes) can depend on it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs = generic_documents(seed, n_docs)
    tok = train_tokenizer(docs + _task_like_lines(), vocab_size)
    with _deterministic_torch(seed, num_threads):
        model = LlamaForCausalLM(_model_config(tok, hidden_size, num_layers))
        rows = _pack(tok, docs, block_size)
        if pretrain_steps > 0:
            _pretrain(model, rows, steps=pretrain_steps, batch_size=batch_size, lr=lr, seed=seed)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
