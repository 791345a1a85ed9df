"""The demo base model: generic pretraining text, a byte-level BPE tokenizer, a small Llama
pretrained on that text until it copies word lists from its context (see the package docstring)."""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from demo.task import (
    ADJECTIVES,
    ECHO_MAX_WORDS,
    ECHO_MIN_WORDS,
    NAMES,
    NOUNS,
    NUMBERS,
    RULES,
    TASK_WORDS,
    VERBS,
)

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)  # ids 0, 1, 2 in this order

DEFAULT_N_DOCS = 8000
DEFAULT_VOCAB_SIZE = 1024
MAX_POSITIONS = 256


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
