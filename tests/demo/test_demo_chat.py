"""The chat demo's data and template: deterministic conversations whose answers follow the rules,
no word list shared between the splits, and a template the demo tokenizer renders compactly."""

from __future__ import annotations

import json

import pytest

from demo import MAX_WORDS, MIN_WORDS, RULES, TASK_WORDS
from demo.chat import CHAT_TEMPLATE, MAX_TURNS, build_demo_chat_data, turns
from tests.conftest import REPO
from tests.demo.test_demo_assets import tree_hashes

TINY = {"n_train": 120, "n_eval": 30, "seed": 4}


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("chat")
    assert build_demo_chat_data(out, **TINY) == {"train": 120, "eval": 30}
    return out


def conversations(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_chat_data_is_deterministic(chat_dir, tmp_path):
    build_demo_chat_data(tmp_path, **TINY)
    assert tree_hashes(tmp_path) == tree_hashes(chat_dir)


def test_every_answer_follows_its_rule_and_no_word_list_repeats(chat_dir):
    lists = {"train": [], "eval": []}
    depths = set()
    for split in lists:
        for conversation in conversations(chat_dir / f"{split}.jsonl"):
            roles = [m["role"] for m in conversation["messages"]]
            assert roles == ["user", "assistant"] * (len(roles) // 2)
            depths.add(len(roles) // 2)
            for question, answer in turns(conversation):
                instruction, _, words = question.partition(": ")
                (rule,) = [fn for text, fn in RULES.values() if text == instruction]
                words = words.split(" ")
                assert MIN_WORDS <= len(words) <= MAX_WORDS and set(words) <= set(TASK_WORDS)
                assert answer == " ".join(rule(words))
                lists[split].append(tuple(words))
    assert depths == set(range(1, MAX_TURNS + 1))
    every = lists["train"] + lists["eval"]
    assert len(set(every)) == len(every)  # so eval never repeats a train word list


def test_the_template_renders_answers_as_the_tokens_of_the_question(chat_dir):
    """Each answer word is the same token as in the question, the EOS ends each answer, and
    every conversation fits configs/demo-chat.yaml's max_seq_len."""
    from transformers import AutoTokenizer

    from models.config.file import load_config
    from models.data.splits import read_split, tokenize

    config = load_config(REPO / "configs" / "demo-chat.yaml", [f"data.path={chat_dir}"])
    assert (REPO / config.data.chat_template).resolve() == CHAT_TEMPLATE
    tok = AutoTokenizer.from_pretrained(REPO / "demo" / "base")
    tok.chat_template = CHAT_TEMPLATE.read_text()
    spec = config.data_spec()
    examples = read_split(spec.train_path, spec)
    features = tokenize(examples, tok, spec.max_seq_len, "reject", train_on="assistant").features
    for example, feature in zip(examples, features, strict=True):
        trained = [
            t
            for t, label in zip(feature["input_ids"], feature["labels"], strict=True)
            if label != -100
        ]
        expected = []
        for _, answer in turns({"messages": example.messages}):
            expected += tok(" " + answer, add_special_tokens=False)["input_ids"]
            expected += [tok.eos_token_id] + tok("\n", add_special_tokens=False)["input_ids"]
        assert trained == expected
