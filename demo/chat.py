"""The demo task as multi-turn chat (`configs/demo-chat.yaml`): the same four rules over the same
words, asked one after another in a conversation, and a chat template for the demo tokenizer.

Every conversation asks 1-3 questions, each on its own word list; the assistant answers each
with the bare words ("sun cat red"). Evaluation checks the last answer, given the turns before
it. As in `demo.task`, a word list is used at most once over both splits, so eval never repeats
train, and the files are the same bytes on every machine (the data's DVC md5 is pinned by a test).

The demo tokenizer has no chat template and no chat markers among its tokens, so the demo ships
one (`CHAT_TEMPLATE`, demo/chat-template.jinja): "Question:" / "Answer:" lines, each answer ended
by the EOS. Its markers are few tokens of the demo vocabulary ("Answer" is one; chatml's
`<|im_start|>assistant\\n` is 19 pieces, which makes a conversation 2.4 times longer), and the
space after "Answer:" belongs to the template, so an answer starts with the same " sun" tokens
the base model already copies from its context.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from demo.task import MAX_WORDS, MIN_WORDS, RULES, TASK_WORDS, write_splits

CHAT_TEMPLATE = Path(__file__).with_name("chat-template.jinja")
MIN_TURNS, MAX_TURNS = 1, 3  # questions per conversation


def _conversation(rng: random.Random, seen: set[tuple[str, ...]]) -> dict:
    """One conversation of 1-3 questions, each on a word list not in `seen` (which it extends)."""
    messages = []
    for _ in range(rng.randint(MIN_TURNS, MAX_TURNS)):
        words = tuple(rng.sample(TASK_WORDS, rng.randint(MIN_WORDS, MAX_WORDS)))
        while words in seen:
            words = tuple(rng.sample(TASK_WORDS, rng.randint(MIN_WORDS, MAX_WORDS)))
        seen.add(words)
        instruction, answer = RULES[rng.choice(sorted(RULES))]
        messages.append({"role": "user", "content": f"{instruction}: {' '.join(words)}"})
        messages.append({"role": "assistant", "content": " ".join(answer(words))})
    return {"messages": messages}


def build_demo_chat_data(
    out_dir: str | Path, *, seed: int = 0, n_train: int = 2000, n_eval: int = 200
) -> dict:
    """Write `train.jsonl` and `eval.jsonl` of chat conversations into `out_dir`.

    Every line is `{"messages": [{"content": ..., "role": "user"}, {..., "role": "assistant"},
    ...]}`. Eval is drawn first, so it stays the same when only n_train changes. Returns the
    number of conversations per split.
    """
    return write_splits(out_dir, _conversation, seed=seed, n_train=n_train, n_eval=n_eval)


def turns(conversation: dict) -> Sequence[tuple[str, str]]:
    """(question, answer) pairs of one conversation, in order."""
    messages = conversation["messages"]
    return [
        (q["content"], a["content"]) for q, a in zip(messages[::2], messages[1::2], strict=True)
    ]
