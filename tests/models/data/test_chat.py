"""Chat rendering, the loss mask token by token, special tokens, and the served prompt."""

import json
import shutil

import pytest

from models.config.specs import DataSpec
from models.data.chat import (
    CHATML,
    encode_request,
    load_prompt_format,
    prepare_tokenizer,
)
from models.data.formats import Example
from models.data.splits import DataError, tokenize

CONVERSATION = (
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris"},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome, since 1871"},
)
# Every turn looks the same: no marker tells an assistant turn from a user turn, so only
# rendering can locate them.
PLAIN = "{% for m in messages %}{{ m['content'] + '\n' }}{% endfor %}"


@pytest.fixture
def tok(tiny_base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_base)


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def expected(tok, pieces, trained):
    """Token ids and labels built piece by piece: a piece's tokens are trained or not."""
    all_ids, labels = [], []
    for piece, train in zip(pieces, trained, strict=True):
        piece_ids = ids(tok, piece)
        all_ids += piece_ids
        labels += piece_ids if train else [-100] * len(piece_ids)
    return all_ids, labels


def features(tok, template, train_on, conversation=CONVERSATION):
    """Tokenized as training does; an inline template as the tokenizer's own, else by name."""
    if "{" in template:
        tok.chat_template, template = template, None
    prepare_tokenizer(tok, DataSpec(format="chat", chat_template=template))
    example = Example("", conversation[-1]["content"], 7, tuple(conversation))
    out = tokenize([example], tok, 256, "reject", train_on=train_on).features[0]
    return out["input_ids"], out["labels"]


CHATML_PIECES = [
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCapital of France?<|im_end|>\n"
    "<|im_start|>assistant\n",
    "Paris<|im_end|>\n",
    "<|im_start|>user\nAnd of Italy?<|im_end|>\n<|im_start|>assistant\n",
    "Rome, since 1871<|im_end|>\n",
]
PLAIN_PIECES = [
    "Be brief.\nCapital of France?\n",
    "Paris\n",
    "And of Italy?\n",
    "Rome, since 1871\n",
]


@pytest.mark.parametrize(
    ("template", "pieces"),
    [("chatml", CHATML_PIECES), (PLAIN, PLAIN_PIECES)],
    ids=["chatml", "plain"],
)
@pytest.mark.parametrize(
    ("train_on", "trained"),
    [
        ("assistant", [False, True, False, True]),
        ("last", [False, False, False, True]),
        ("all", [True, True, True, True]),
    ],
)
def test_label_mask_token_by_token(tok, tmp_path, template, pieces, train_on, trained):
    if template == PLAIN:  # a template file, as data.chat_template may name one
        (tmp_path / "plain.jinja").write_text(PLAIN)
        template = str(tmp_path / "plain.jinja")
    got_ids, got_labels = features(tok, template, train_on)
    want_ids, want_labels = expected(tok, pieces, trained)
    # Neither template ends a turn with the EOS: it follows the conversation, always trained.
    assert got_ids == want_ids + [tok.eos_token_id]
    assert got_labels == want_labels + [tok.eos_token_id]
    if train_on == "assistant":
        kept = tok.decode([t for t in got_labels if t != -100])
        assert kept == pieces[1] + pieces[3] + tok.eos_token


def test_a_template_that_ends_turns_with_eos_gets_no_second_one(tok):
    template = (
        "{% for m in messages %}{{ m['content'] }}"
        "{{ eos_token if m['role'] == 'assistant' else '\n' }}{% endfor %}"
    )
    got_ids, got_labels = features(tok, template, "assistant")
    assert got_ids.count(tok.eos_token_id) == 2 and got_ids[-1] == tok.eos_token_id
    assert got_labels[-1] == tok.eos_token_id


def test_no_template_is_refused_never_a_silent_fallback(tok):
    tok.chat_template = None
    with pytest.raises(DataError, match="no chat template; set data.chat_template"):
        prepare_tokenizer(tok, DataSpec(format="chat"))
    with pytest.raises(DataError, match="no file 'nope.jinja' and no built-in"):
        prepare_tokenizer(tok, DataSpec(format="chat", chat_template="nope.jinja"))
    assert (
        prepare_tokenizer(tok, DataSpec(format="chat", chat_template="chatml")).chat_template
        == CHATML
    )


def test_a_template_that_rewrites_earlier_turns_is_refused_with_the_line(tok):
    # Renders only the last two messages: earlier prefixes are not prefixes of the whole.
    template = "{% for m in messages[-2:] %}{{ m['content'] + '\n' }}{% endfor %}"
    with pytest.raises(DataError, match=r"data:7: .*message 3 as a prefix"):
        features(tok, template, "assistant")


def bos_tokenizer(tiny_base, out):
    """The demo tokenizer changed to add <s> by itself, as Llama's does."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)]
    )
    tok.save_pretrained(out)
    return AutoTokenizer.from_pretrained(out)


def test_bos_once_where_the_tokenizer_adds_it_never_twice(tiny_base, tok, tmp_path):
    bos_tok = bos_tokenizer(tiny_base, tmp_path / "bos")
    plain = Example("2+2=", " 4", 1)
    with_bos = tokenize([plain], bos_tok, 64, "reject").features[0]
    without = tokenize([plain], tok, 64, "reject").features[0]
    assert with_bos["input_ids"] == [tok.bos_token_id] + without["input_ids"]
    assert with_bos["labels"] == [-100] + without["labels"]
    assert without["input_ids"][0] != tok.bos_token_id
    # A template that writes the BOS itself: still one.
    template = "{{ bos_token }}" + PLAIN
    got_ids, _ = features(bos_tok, template, "assistant")
    assert got_ids[:2] == [tok.bos_token_id, ids(tok, "Be")[0]]
    assert got_ids.count(tok.bos_token_id) == 1
    served = encode_request(bos_tok, list(CONVERSATION[:-1]), "chat")
    assert served == got_ids[: len(served)] and served.count(tok.bos_token_id) == 1


def base_variant(tiny_base, out, change):
    """tiny_base with its tokenizer changed by `change` (weights and config linked)."""
    from transformers import AutoTokenizer

    out.mkdir()
    for f in tiny_base.iterdir():
        if not f.name.startswith("tokenizer"):
            (out / f.name).symlink_to(f)
    tok = AutoTokenizer.from_pretrained(tiny_base)
    change(tok)
    tok.save_pretrained(out)
    return out


def test_missing_eos_comes_from_the_model_config_and_missing_pad_is_the_eos(tiny_base, tmp_path):
    from transformers import AutoTokenizer

    def drop(tok):
        tok.eos_token = None
        tok.pad_token = None

    base = base_variant(tiny_base, tmp_path / "no-eos", drop)
    tok = AutoTokenizer.from_pretrained(base)
    assert (tok.eos_token_id, tok.pad_token_id) == (None, None)
    prepare_tokenizer(tok, DataSpec(), str(base))
    eos = json.loads((tiny_base / "config.json").read_text())["eos_token_id"]
    assert (tok.eos_token_id, tok.pad_token_id) == (eos, eos)
    out = tokenize([Example("2+2=", " 4", 1)], tok, 64, "reject").features[0]
    assert out["input_ids"][-1] == out["labels"][-1] == eos

    config = json.loads((tiny_base / "config.json").read_text())
    (base / "config.json").unlink()
    (base / "config.json").write_text(json.dumps({**config, "eos_token_id": None}))
    with pytest.raises(DataError, match="has no EOS token and the model config names none"):
        prepare_tokenizer(AutoTokenizer.from_pretrained(base), DataSpec(), str(base))


def test_served_prompt_is_token_for_token_what_training_saw(tiny_base, tmp_path):
    """Train a chat adapter on a base whose tokenizer adds BOS and has no pad token, with the
    template from the config; the served model, loaded from the adapter folder alone, encodes
    the conversation's prompt exactly as training did."""
    from models.config.specs import TrainSpec
    from models.evaluation.serving import generate, load_adapted
    from models.methods import AdapterSpec
    from models.training.train import train_adapter

    def change(tok):
        from tokenizers import processors

        tok._tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)]
        )
        tok.pad_token = None

    base = base_variant(tiny_base, tmp_path / "base", change)
    data = tmp_path / "data"
    data.mkdir()
    line = json.dumps({"messages": list(CONVERSATION)}) + "\n"
    (data / "train.jsonl").write_text(line * 8)
    (data / "eval.jsonl").write_text(line)
    spec = DataSpec(path=str(data), format="chat", chat_template="chatml", max_seq_len=256)
    adapter = tmp_path / "adapter"
    train_adapter(
        TrainSpec(
            base_model=str(base),
            data=spec,
            method="lora",
            adapter=AdapterSpec(r=2, alpha=4.0, dropout=0.0, target_modules=["q_proj"], seed=0),
            max_steps=2,
            learning_rate=1e-3,
            batch_size=4,
            device="cpu",
            dtype="float32",
        ),
        output_dir=adapter,
    )
    assert load_prompt_format(adapter) == "chat"
    model, served_tok = load_adapted(str(base), adapter)
    assert served_tok.chat_template == CHATML

    from transformers import AutoTokenizer

    train_tok = prepare_tokenizer(AutoTokenizer.from_pretrained(base), spec, str(base))
    example = Example("", CONVERSATION[-1]["content"], 1, CONVERSATION)
    trained = tokenize([example], train_tok, 256, "reject").features[0]
    served = encode_request(served_tok, example.request(), load_prompt_format(adapter))
    assert served[0] == train_tok.bos_token_id and served.count(train_tok.bos_token_id) == 1
    assert served == trained["input_ids"][: len(served)]
    # The prompt ends exactly where the trained answer starts.
    assert trained["labels"][len(served) - 1] == -100 and trained["labels"][len(served)] != -100
    assert served_tok.decode(trained["input_ids"][len(served) :]).startswith("Rome")
    # A plain string is one user turn.
    one_turn = encode_request(served_tok, "Hi", "chat")
    assert (
        served_tok.decode(one_turn) == "<s><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    answers = generate(
        model, served_tok, [list(CONVERSATION[:-1]), "Hi"], max_new_tokens=3, fmt="chat"
    )
    assert len(answers) == 2 and all("<|im_end|>" not in a for a in answers)
    shutil.rmtree(adapter)


@pytest.mark.parametrize(
    ("record", "request_"),
    [
        ({"instruction": "Say hi", "output": "hi"}, "Say hi"),
        ({"instruction": "Say hi", "output": "hi"}, {"instruction": "Say hi"}),
        (
            {"instruction": "Add the numbers", "input": "2 and 2", "output": "4"},
            {"instruction": "Add the numbers", "input": "2 and 2"},
        ),
    ],
)
def test_an_alpaca_request_is_served_as_its_training_prompt(tok, tmp_path, record, request_):
    """Training reads the record from a file; serving renders the request: the same token ids
    up to the first trained one (the Input block included)."""
    from models.data.formats import read_split

    (tmp_path / "train.jsonl").write_text(json.dumps(record) + "\n")
    example = read_split(tmp_path / "train.jsonl", DataSpec(format="alpaca"))[0]
    trained = tokenize([example], tok, 256, "reject").features[0]
    served = encode_request(tok, request_, "alpaca")
    assert served == trained["input_ids"][: len(served)]
    assert trained["labels"][len(served) - 1] == -100 and trained["labels"][len(served)] != -100
    assert ("### Input:\n2 and 2" in tok.decode(served)) == ("input" in record)


@pytest.mark.parametrize(
    ("request_", "problem"),
    [
        ([{"role": "user", "content": "hi"}], "takes a string or {instruction, input}"),
        ({"input": "2 and 2"}, "needs a non-empty string 'instruction'"),
        ({"instruction": "Add", "input": 4}, "needs a non-empty string 'instruction'"),
        ({"instruction": "Add", "output": "4"}, r"takes instruction and input, not \['output'\]"),
    ],
)
def test_a_bad_alpaca_request_is_refused_by_name(tok, request_, problem):
    with pytest.raises(DataError, match=problem):
        encode_request(tok, request_, "alpaca")
