"""Deterministic demo assets: a tiny Llama base model and an instruction task it cannot do.

The demo lets a loraflow user watch a LoRA fine-tune produce *real* learning on a laptop CPU:

* `build_demo_base_model` trains a byte-level BPE tokenizer and briefly pretrains a small
  Llama-architecture causal LM on generic template text. Some of that text says a word list twice
  ("Ivy said: cat red sun. Ben said it again: cat red sun."), which is what makes the model learn
  to copy from its context (induction heads). The text never asks for words to be picked or
  reordered, so the base model scores ~0 exact match on the demo task.
* `build_demo_data` writes train/eval JSONL for that task: first word, last word or the words
  reversed, checked by exact string match. Eval word sequences never occur in train, so the
  score measures a learned rule, not memorisation.

A LoRA adapter only has to re-route the copying the base already does, which a rank-8 update
can learn in a minute or two of CPU training; without the copy skill in the base it could not.

Both builders are deterministic to the byte: same arguments, same sha256 for every written file,
also across processes. Hence: local RNGs only, the torch thread count pinned while training,
sorted JSON keys, and no paths or timestamps in any file.
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
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)  # ids 0, 1, 2 in this order

DEFAULT_N_DOCS = 8000
DEFAULT_VOCAB_SIZE = 1024
MAX_POSITIONS = 256

# --- vocabulary -----------------------------------------------------------------------------------
# Plain lowercase words, each frequent in the generic text, so the tokenizer learns every one as a
# single token (with its leading space) and task answers stay a few tokens long.

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

# The words task inputs (and the copied lists of the generic text) are drawn from.
TASK_WORDS = NOUNS + ADJECTIVES

# --- the demo task --------------------------------------------------------------------------------


def _first(words: Sequence[str]) -> list[str]:
    return [words[0]]


def _last(words: Sequence[str]) -> list[str]:
    return [words[-1]]


def _reverse(words: Sequence[str]) -> list[str]:
    return list(reversed(words))


def _repeat(words: Sequence[str]) -> list[str]:
    return list(words)


# Rule name -> (instruction shown in the prompt, function from input words to answer words).
RULES: dict[str, tuple[str, Callable[[Sequence[str]], list[str]]]] = {
    "first": ("First word of", _first),
    "last": ("Last word of", _last),
    "reverse": ("Reverse the words", _reverse),
    "repeat": ("Repeat the words", _repeat),
}
MIN_WORDS, MAX_WORDS = 3, 5  # input words per example
ECHO_MIN_WORDS, ECHO_MAX_WORDS = 3, 5  # words per repeated list in the generic text


def format_prompt(instruction: str, words: Sequence[str]) -> str:
    """The prompt of one example, e.g. "Reverse the words: cat red sun\\nAnswer:"."""
    return f"{instruction}: {' '.join(words)}\nAnswer:"


def format_completion(answer: Sequence[str]) -> str:
    """The target continuation, e.g. " sun red cat": one space before every word."""
    return "".join(f" {w}" for w in answer)


def _sample_example(rng: random.Random, rules: Sequence[str]) -> tuple[tuple[str, ...], dict]:
    """One random example and its input word sequence."""
    rule = rules[rng.randrange(len(rules))]
    words = tuple(rng.sample(TASK_WORDS, rng.randint(MIN_WORDS, MAX_WORDS)))  # distinct words
    instruction, answer = RULES[rule]
    prompt, completion = format_prompt(instruction, words), format_completion(answer(words))
    return words, {"prompt": prompt, "completion": completion}


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    """One sorted-key JSON object per line with "\\n" endings: byte-identical on every run."""
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
    """Write `train.jsonl` and `eval.jsonl` of the demo task into `out_dir`.

    Every line is `{"completion": ..., "prompt": ...}`. Rules are mixed uniformly. A word sequence
    is used at most once over both splits (whatever the rule), so eval never repeats train.
    Returns the number of examples per split.
    """
    unknown = [r for r in rules if r not in RULES]
    if unknown or not rules:
        raise ValueError(f"unknown rules {unknown}; choose from {sorted(RULES)}")
    rng = random.Random(seed)
    seen: set[tuple[str, ...]] = set()  # membership only: set order never reaches the output
    splits: dict[str, list[dict]] = {}
    # Eval is drawn first, so it stays the same when only n_train changes.
    for split, n in (("eval", n_eval), ("train", n_train)):
        rows = splits[split] = []
        while len(rows) < n:
            words, example = _sample_example(rng, list(rules))
            if words not in seen:
                seen.add(words)
                rows.append(example)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / "train.jsonl", splits["train"])
    _write_jsonl(out / "eval.jsonl", splits["eval"])
    return {"train": n_train, "eval": n_eval}


# --- generic pretraining text ---------------------------------------------------------------------


def _generic_sentence(rng: random.Random, topic: str) -> str:
    """One template sentence; `topic` is the noun its document keeps coming back to."""
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
        # Sentence-initial uses of the instruction words, so they are trained tokens too.
        f"Answer the question about the {topic}, {c(NAMES)}.",
        f"First, {c(NAMES)} {c(VERBS)} the {topic}.",
        f"Last, the {topic} {c(VERBS)} a {noun}.",
        f"Reverse the {adj} {noun} out of the {noun2}.",
        f"Words like {noun} and {noun2} are short.",
        f"{c(NAMES)} said: the {topic} is {adj}.",
    )
    return templates[rng.randrange(len(templates))]


def _echo_sentence(rng: random.Random) -> str:
    """A random word list said twice: the text that teaches the model to copy from context."""
    words = " ".join(rng.sample(TASK_WORDS, rng.randint(ECHO_MIN_WORDS, ECHO_MAX_WORDS)))
    a, b = rng.sample(NAMES, 2)
    w = rng.choice(TASK_WORDS)
    templates = (
        f"{a} said: {words}. {b} said it again: {words}.",
        f"{a} wrote {words} on the board, and {b} wrote {words} too.",
        f"The song goes {words}, and then {words} once more.",
        f"{a} shouted: {w}, {w}, {w}!",
    )
    return templates[rng.randrange(len(templates))]


def generic_documents(seed: int, n_docs: int, echo_rate: float = 0.6) -> list[str]:
    """Short documents of template sentences; `echo_rate` of the sentences repeat a word list.

    0.6 was tuned: with far fewer echoes the copy skill forms too late for a one-minute
    pretraining, and with echoes only (no topic nouns recurring) it did not form at all.
    """
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        topic = rng.choice(NOUNS)
        sentences = [
            _echo_sentence(rng) if rng.random() < echo_rate else _generic_sentence(rng, topic)
            for _ in range(rng.randint(3, 7))
        ]
        docs.append(("\n" if rng.random() < 0.3 else " ").join(sentences))
    return docs


def task_like_lines() -> list[str]:
    """The task's fixed vocabulary (instructions, answer marker, words), never whole examples."""
    lines = [f"{instruction}: Answer:" for instruction, _ in RULES.values()]
    return lines + [" ".join(TASK_WORDS)]


# --- tokenizer ------------------------------------------------------------------------------------


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE without an added prefix space, so decode(encode(text)) == text exactly.

    `vocab_size` is an upper bound: training stops early once no pair occurs twice. The BPE
    trainer breaks count ties by the pair itself, so the result is the same in every process.
    """
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
        # No automatic <s> or </s>: loraflow tokenizes prompt and completion apart and appends
        # eos itself, so a text must encode to the same ids alone or concatenated.
        add_bos_token=False,
        add_eos_token=False,
        model_max_length=MAX_POSITIONS,
    )


# --- model and pretraining ------------------------------------------------------------------------


@contextlib.contextmanager
def _deterministic_torch(seed: int, num_threads: int) -> Iterator[None]:
    """Seed torch and pin the thread count (it can change float summation order); restore after."""
    prev_threads = torch.get_num_threads()
    prev_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_deterministic)


def _pack(tok: PreTrainedTokenizerFast, docs: Sequence[str], block_size: int) -> torch.Tensor:
    """Concatenate `doc </s>` for every document and cut into rows of `block_size` tokens.

    No `<s>` is added: fine-tuning feeds prompts without one, so the model must not rely on it.
    """
    ids: list[int] = []
    for doc_ids in tok(list(docs)).input_ids:
        ids.extend(doc_ids)
        ids.append(tok.eos_token_id)
    n_rows = len(ids) // block_size
    if n_rows == 0:
        raise ValueError(f"too little text for one block of {block_size} tokens")
    return torch.tensor(ids[: n_rows * block_size], dtype=torch.long).view(n_rows, block_size)


def _lr_factor(step: int, steps: int) -> float:
    """Linear warmup over the first 10% of steps, then cosine decay to 10% of the peak."""
    warmup = max(1, steps // 10)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))


def _pretrain(
    model: LlamaForCausalLM,
    rows: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> list[float]:
    """Full-parameter AdamW on packed rows, shuffled per epoch; returns the per-step losses."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, steps))
    batch_size = min(batch_size, len(rows))
    order, pos, losses = torch.randperm(len(rows), generator=gen), 0, []
    model.train()
    for _ in range(steps):
        if pos + batch_size > len(order):  # next epoch
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


def model_config(
    tok: PreTrainedTokenizerFast, hidden_size: int, num_layers: int, head_dim: int = 32
) -> LlamaConfig:
    """A small Llama: tied embeddings (the copy skill reuses them), SwiGLU at ~8/3 width."""
    if hidden_size % head_dim:
        raise ValueError(f"hidden_size {hidden_size} is not a multiple of head_dim {head_dim}")
    heads = hidden_size // head_dim
    return LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=max(16, hidden_size * 8 // 3 // 16 * 16),
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=1e-5,
        # 3x the usual 0.02: with tiny init, attention stays uniform for hundreds of steps before
        # the copy heads appear; at 0.06 they form in about half the steps (0.1 was worse).
        initializer_range=0.06,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def build_demo_base_model(
    out_dir: str | Path,
    *,
    seed: int = 0,
    pretrain_steps: int = 600,
    hidden_size: int = 128,
    num_layers: int = 2,
    n_docs: int = DEFAULT_N_DOCS,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    block_size: int = 128,
    batch_size: int = 16,
    lr: float = 3e-3,
    num_threads: int = 2,
) -> Path:
    """Train the tokenizer, pretrain a small Llama on generic text and save both to `out_dir`.

    The result loads with `AutoModelForCausalLM.from_pretrained(out_dir)` and
    `AutoTokenizer.from_pretrained(out_dir)`. Defaults take about a minute on 2 CPU cores; the
    copy skill the demo relies on appears after ~500-600 steps, so do not cut `pretrain_steps`
    for a real demo (tests use a few steps only to check the files). `num_threads` is pinned
    while training because the bytes of the weights may depend on it. Returns `out_dir`.
    """
    docs = generic_documents(seed, n_docs)
    tok = train_tokenizer(docs + task_like_lines(), vocab_size)
    with _deterministic_torch(seed, num_threads):
        model = LlamaForCausalLM(model_config(tok, hidden_size, num_layers))
        if pretrain_steps > 0:
            rows = _pack(tok, docs, block_size)
            _pretrain(model, rows, steps=pretrain_steps, batch_size=batch_size, lr=lr, seed=seed)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        do_sample=False,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
