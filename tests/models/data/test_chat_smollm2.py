"""A real chat template (SmolLM2-135M-Instruct's): its default system prompt, its BOS
(`<|im_start|>`, which the template writes and the tokenizer does not add) never doubled, the
loss mask token by token, and the served prompt equal to what training saw."""

import pytest

from models.config.specs import DataSpec
from models.data.chat import bos_prefix, encode_request, prepare_tokenizer, turn_end
from models.data.formats import Example
from models.data.splits import tokenize

DEFAULT_SYSTEM = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n"
)
CONVERSATION = (
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris"},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome, since 1871"},
)


@pytest.fixture(scope="module")
def tok(smollm2):
    from transformers import AutoTokenizer

    return prepare_tokenizer(AutoTokenizer.from_pretrained(smollm2), DataSpec(format="chat"))


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def features(tok, conversation, train_on="assistant"):
    example = Example("", conversation[-1]["content"], 1, tuple(conversation))
    out = tokenize([example], tok, 512, "reject", train_on=train_on).features[0]
    return out["input_ids"], out["labels"]


def test_the_tokenizer_is_the_instruct_models(tok):
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>",) + ("<|im_end|>",) * 2
    assert len(tok) == 49152
    assert bos_prefix(tok) == []  # the template writes the BOS; the tokenizer adds none
    assert turn_end(tok) == "<|im_end|>"


def test_default_system_prompt_one_bos_and_the_loss_mask_token_by_token(tok):
    got_ids, got_labels = features(tok, CONVERSATION)
    pieces = [
        (DEFAULT_SYSTEM + "<|im_start|>user\nCapital of France?<|im_end|>\n"
         "<|im_start|>assistant\n", False),
        ("Paris<|im_end|>\n", True),
        ("<|im_start|>user\nAnd of Italy?<|im_end|>\n<|im_start|>assistant\n", False),
        ("Rome, since 1871<|im_end|>\n", True),
    ]  # fmt: skip
    want_ids = [t for piece, _ in pieces for t in ids(tok, piece)]
    want_labels = [t if trained else -100 for piece, trained in pieces for t in ids(tok, piece)]
    # The template ends each assistant turn with the EOS (<|im_end|>): no second one follows.
    assert got_ids == want_ids
    assert got_labels == want_labels
    assert got_ids[:2] == [tok.bos_token_id, ids(tok, "system")[0]]  # one BOS, not two


def test_a_system_message_replaces_the_default_one(tok):
    got_ids, _ = features(tok, ({"role": "system", "content": "Be brief."}, *CONVERSATION))
    text = tok.decode(got_ids)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert "SmolLM" not in text


@pytest.mark.parametrize("turns", [2, 4])
def test_the_served_prompt_is_token_for_token_what_training_saw(tok, turns):
    conversation = CONVERSATION[:turns]
    got_ids, labels = features(tok, conversation, train_on="last")
    answer_start = next(i for i, label in enumerate(labels) if label != -100)
    served = encode_request(tok, list(conversation[:-1]), "chat")
    assert served == got_ids[:answer_start]
    if turns == 2:  # a string is one user turn, rendered the same way
        assert encode_request(tok, "Capital of France?", "chat") == served
