"""The prepared form of a split holds today's tokens: for every format and every chat template
the tests know, the ids and labels read back from the memory-mapped files equal, example by
example, what `models.data.splits.tokenize` (one conversation at a time, rendering and
tokenizing every prefix) makes of the same file. The reference is that per-example code path,
unchanged; the prepared path renders and tokenizes each conversation once."""

from __future__ import annotations

import json
import random

import pytest

from models.config.specs import DataSpec
from models.data.chat import CHATML, prepare_tokenizer
from models.data.formats import DataError, read_split
from models.data.prepared import prepare_split
from models.data.splits import tokenize
from tests.conftest import REPO

# Llama-3's and Qwen2's templates as they ship (tools and date lines left out): headers with a
# blank line and trimmed content, ended by <|eot_id|>; ChatML with a default system prompt.
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
QWEN2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
PLAIN = "{% for m in messages %}{{ m['content'] + '\n' }}{% endfor %}"
EOS_ENDS = (
    "{% for m in messages %}{{ m['content'] }}"
    "{{ eos_token if m['role'] == 'assistant' else '\n' }}{% endfor %}"
)
BOS_CHATML = "{{ bos_token }}" + CHATML
TEMPLATES = {
    "demo": "demo/chat-template.jinja",
    "chatml": "chatml",
    "llama3": LLAMA3,
    "qwen2": QWEN2,
    "plain": PLAIN,
    "eos_ends_turns": EOS_ENDS,
    "bos_in_template": BOS_CHATML,
}
WORDS = "red cat sun blue tree  dog\nsky   the a of Paris 1871 ünïcode 東京 ! ? , .".split(" ")


def _content(rng: random.Random) -> str:
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
    # Leading/trailing whitespace where templates trim or tokenizers merge across a boundary.
    return rng.choice(["", " ", "\n", "  "]) + words + rng.choice(["", " ", "\n", "\n\n"])


def conversations(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        messages = [{"role": "system", "content": _content(rng)}] if rng.random() < 0.3 else []
        for _ in range(rng.randint(1, 6)):
            messages.append({"role": "user", "content": _content(rng)})
            messages.append({"role": "assistant", "content": _content(rng).strip() or "ok"})
        rows.append({"messages": messages})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def reference(path, data: DataSpec, tok):
    """Today's tokens: every example read, then tokenized one by one."""
    return tokenize(
        read_split(path, data),
        tok,
        data.max_seq_len,
        data.too_long,
        source=str(path),
        train_on=data.train_on,
    )


def assert_same(prepared, want):
    assert len(prepared) == len(want.features)
    assert prepared.truncated == want.truncated
    for i, feature in enumerate(want.features):
        got = prepared.feature(i)
        assert got["input_ids"] == feature["input_ids"], i
        assert got["labels"] == feature["labels"], i


@pytest.fixture(scope="module")
def demo_tok():
    """A fresh copy of the demo base's tokenizer per call (the tests change it)."""
    from transformers import AutoTokenizer

    return lambda: AutoTokenizer.from_pretrained(REPO / "demo" / "base")


def chat_tokenizer(make, name, tmp_path, adds_bos=False):
    tok = make()
    template = TEMPLATES[name]
    if name == "llama3":  # its header tokens are special tokens of Llama-3's tokenizer
        tok.add_special_tokens(
            {
                "additional_special_tokens": [
                    "<|start_header_id|>",
                    "<|end_header_id|>",
                    "<|eot_id|>",
                ]
            }
        )
    if adds_bos:
        from tokenizers import processors

        tok._tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)]
        )
    if "{" in template:
        (tmp_path / f"{name}.jinja").write_text(template)
        template = str(tmp_path / f"{name}.jinja")
    data = DataSpec(path=str(tmp_path), format="chat", chat_template=template, max_seq_len=4096)
    return prepare_tokenizer(tok, data), data


@pytest.mark.parametrize("name", list(TEMPLATES))
@pytest.mark.parametrize("train_on", ["assistant", "last", "all"])
def test_chat_prepared_equals_todays_tokens(demo_tok, tmp_path, name, train_on):
    path = write_jsonl(tmp_path / "train.jsonl", conversations(60))
    tok, data = chat_tokenizer(demo_tok, name, tmp_path, adds_bos=name == "bos_in_template")
    data = DataSpec(**{**data.to_dict(), "train_on": train_on})
    prepared = prepare_split(path, data, tok, cache_dir=tmp_path / "cache")
    assert_same(prepared, reference(path, data, tok))
    # Every conversation took the linear path (none needed chat_features).
    assert prepared.meta["by_chat_features"] == 0


def test_chat_truncated_and_a_bos_the_tokenizer_adds(demo_tok, tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", conversations(40, seed=1))
    tok, data = chat_tokenizer(demo_tok, "chatml", tmp_path, adds_bos=True)
    data = DataSpec(**{**data.to_dict(), "max_seq_len": 48, "too_long": "truncate"})
    prepared = prepare_split(path, data, tok, cache_dir=tmp_path / "cache")
    want = reference(path, data, tok)
    assert want.truncated > 0
    assert_same(prepared, want)


def test_smollm2_default_system_prompt(smollm2, tmp_path):
    from transformers import AutoTokenizer

    data = DataSpec(path=str(tmp_path), format="chat", max_seq_len=4096)
    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(smollm2), data)
    path = write_jsonl(tmp_path / "train.jsonl", conversations(40, seed=2))
    for train_on in ("assistant", "last", "all"):
        spec = DataSpec(**{**data.to_dict(), "train_on": train_on})
        prepared = prepare_split(path, spec, tok, cache_dir=tmp_path / "cache")
        assert_same(prepared, reference(path, spec, tok))


def test_a_template_whose_turns_cannot_be_located_is_refused_in_the_same_words(demo_tok, tmp_path):
    # Renders only the last two messages: earlier prefixes are not prefixes of the whole.
    (tmp_path / "last2.jinja").write_text(
        "{% for m in messages[-2:] %}{{ m['content'] + '\n' }}{% endfor %}"
    )
    data = DataSpec(path=str(tmp_path), format="chat", chat_template=str(tmp_path / "last2.jinja"))
    tok = prepare_tokenizer(demo_tok(), data)
    rows = conversations(5, seed=3)
    rows[3]["messages"] = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    rows[:3] = [{"messages": r["messages"][-2:]} for r in rows[:3] if r["messages"]]
    path = write_jsonl(tmp_path / "train.jsonl", rows[:4])
    with pytest.raises(DataError) as today:
        reference(path, data, tok)
    with pytest.raises(DataError) as prepared:
        prepare_split(path, data, tok, cache_dir=tmp_path / "cache")
    assert str(prepared.value) == str(today.value)
    assert ":4: the chat template does not render message 2" in str(prepared.value)


PLAIN_ROWS = {
    "prompt_completion": lambda i: {"prompt": f"Reverse: red cat {i}\n", "completion": " cat red"},
    "alpaca": lambda i: {
        "instruction": f"Reverse {i}",
        "input": "red cat" * (i % 2),
        "output": "x",
    },
    "text": lambda i: {"text": f"The cat sat on mat {i}. " * (1 + i % 5)},
}


@pytest.mark.parametrize("fmt", list(PLAIN_ROWS))
@pytest.mark.parametrize("adds_bos", [False, True])
def test_other_formats_prepared_equal_todays_tokens(demo_tok, tmp_path, fmt, adds_bos):
    path = write_jsonl(tmp_path / "train.jsonl", [PLAIN_ROWS[fmt](i) for i in range(50)])
    data = DataSpec(path=str(tmp_path), format=fmt, max_seq_len=40, too_long="truncate")
    tok = demo_tok()
    if adds_bos:
        from tokenizers import processors

        tok._tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)]
        )
    tok = prepare_tokenizer(tok, data)
    prepared = prepare_split(path, data, tok, cache_dir=tmp_path / "cache")
    assert_same(prepared, reference(path, data, tok))


def test_other_file_types_prepared_equal_todays_tokens(demo_tok, tmp_path):
    import pandas as pd

    rows = [PLAIN_ROWS["prompt_completion"](i) for i in range(30)]
    frame = pd.DataFrame(rows)
    frame.to_csv(tmp_path / "train.csv", index=False)
    frame.to_parquet(tmp_path / "train.parquet")
    (tmp_path / "train.json").write_text(json.dumps(rows))
    tok = prepare_tokenizer(demo_tok(), DataSpec())
    for name in ("train.csv", "train.parquet", "train.json"):
        data = DataSpec(path=str(tmp_path), train_file=name)
        prepared = prepare_split(tmp_path / name, data, tok, cache_dir=tmp_path / "cache")
        assert_same(prepared, reference(tmp_path / name, data, tok))


def test_a_turn_boundary_inside_a_token_is_refused_as_today(demo_tok, tmp_path):
    # No separator: "gar" + "den" tokenizes as g|ard|en whole but g|ar + d|en cut at the turn,
    # so the assistant turn has no token boundary to start at.
    (tmp_path / "nosep.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    data = DataSpec(path=str(tmp_path), format="chat", chat_template=str(tmp_path / "nosep.jinja"))
    tok = prepare_tokenizer(demo_tok(), data)
    rows = [
        {"messages": [{"role": "user", "content": "gar"}, {"role": "assistant", "content": "den"}]}
    ]
    path = tmp_path / "train.jsonl"
    # Blank lines first: it is line 20, past the conversations compared with chat_features.
    path.write_text("\n" * 19 + json.dumps(rows[0]) + "\n")
    with pytest.raises(DataError) as today:
        reference(path, data, tok)
    with pytest.raises(DataError) as prepared:
        prepare_split(path, data, tok, cache_dir=tmp_path / "cache")
    assert str(prepared.value) == str(today.value)
    assert ":20: the chat template does not render message 2" in str(prepared.value)


def test_a_sampled_difference_prepares_the_whole_split_by_chat_features(
    demo_tok, tmp_path, monkeypatch
):
    from models.data import encoder

    def wrong(self, raw, pieces, plan):  # a linear path that gets one label wrong
        ids, labels = right(self, raw, pieces, plan)
        return ids, [-100, *labels[1:]] if labels[0] != -100 else [ids[0], *labels[1:]]

    right = encoder.Encoder._from_pieces
    monkeypatch.setattr(encoder.Encoder, "_from_pieces", wrong)
    path = write_jsonl(tmp_path / "train.jsonl", conversations(30))
    tok, data = chat_tokenizer(demo_tok, "chatml", tmp_path)
    prepared = prepare_split(path, data, tok, cache_dir=tmp_path / "cache")
    assert_same(prepared, reference(path, data, tok))
    assert prepared.meta["by_chat_features"] == 30
