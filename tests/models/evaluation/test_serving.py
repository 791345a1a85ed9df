"""What is served is what was trained: loading an adapter, and greedy generation."""

import pytest
import torch

from models.base_model.loading import load_base
from models.evaluation.serving import generate, load_adapted
from tests.tasks.test_registry import trained_adapter

PROMPTS = ["the red cat", "Q: what is the capital of France?\nA:", "a", "once upon a time there"]


def greedy_reference(model, tok, prompt: str, steps: int, stop: bool = True) -> list[int]:
    """Greedy decoding one token at a time on the unpadded prompt: argmax of the last logits,
    up to and including the tokenizer's eos (or `steps` tokens whatever they are: stop=False)."""
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    out: list[int] = []
    for _ in range(steps):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids + out])).logits[0, -1]
        out.append(int(logits.argmax()))
        if stop and out[-1] == tok.eos_token_id:
            break
    return out


@pytest.fixture(scope="module")
def base(tiny_base):
    model, tok = load_base(str(tiny_base))
    model.eval()
    return model, tok


def test_load_adapted_reproduces_the_trained_model(tiny_base, tmp_path):
    ids, expected = trained_adapter(tiny_base, tmp_path / "adapter")
    model, tok = load_adapted(str(tiny_base), tmp_path / "adapter")
    assert not model.training
    with torch.no_grad():
        got = model(**ids).logits
    assert torch.equal(got, expected)
    with torch.no_grad():
        base_logits = load_base(str(tiny_base))[0](**ids).logits
    assert not torch.allclose(got, base_logits)  # the adapter is really applied
    assert tok.name_or_path == str(tmp_path / "adapter")  # the tokenizer saved with the adapter


def test_generate_is_greedy_and_the_same_for_any_batch_size(base):
    model, tok = base
    expected = [
        tok.decode(greedy_reference(model, tok, p, 6), skip_special_tokens=True) for p in PROMPTS
    ]
    assert len({len(tok(p)["input_ids"]) for p in PROMPTS}) > 1  # batches are left-padded
    for batch_size in (1, 2, 4):
        assert generate(model, tok, PROMPTS, max_new_tokens=6, batch_size=batch_size) == expected
    assert generate(model, tok, PROMPTS, max_new_tokens=6) == expected  # and on a second call


def test_generate_respects_max_new_tokens(base):
    model, tok = base
    reference = greedy_reference(model, tok, PROMPTS[0], 5)
    for n in (1, 3, 5):
        [text] = generate(model, tok, PROMPTS[:1], max_new_tokens=n)
        assert text == tok.decode(reference[:n], skip_special_tokens=True)


def test_generate_stops_at_the_models_eos(base):
    model, tok = base
    stopped = 0
    for prompt in PROMPTS:
        full = greedy_reference(model, tok, prompt, 8, stop=False)
        if tok.eos_token_id in full[:-1]:  # the model ends its answer, then would go on
            stopped += 1
            expected = tok.decode(full[: full.index(tok.eos_token_id)], skip_special_tokens=True)
            assert expected != tok.decode(full, skip_special_tokens=True)
            assert generate(model, tok, [prompt], max_new_tokens=8) == [expected]
    assert stopped  # the tiny model does end some answers within 8 tokens


def test_generate_stops_at_the_tokenizers_eos_in_a_batch(tiny_base):
    model, tok = load_base(str(tiny_base))
    model.eval()
    # A prompt whose greedy continuation runs 8 tokens without eos; the token it emits third is
    # made the end-of-sequence token: decoding must stop right after it (a vocabulary token made
    # eos this way is not a special token, so the text keeps it).
    prompt, reference = next(
        (p, ref) for p in PROMPTS if len(ref := greedy_reference(model, tok, p, 8)) == 8
    )
    stop = reference[2]
    first = reference.index(stop)
    tok.eos_token = tok.convert_ids_to_tokens(stop)
    assert tok.eos_token_id == stop
    expected = tok.decode(reference[: first + 1], skip_special_tokens=True)
    assert expected != tok.decode(reference, skip_special_tokens=True)
    assert generate(model, tok, [prompt], max_new_tokens=8) == [expected]
    # In a batch, the row that stopped is padded while the others go on; each as when alone.
    alone = [generate(model, tok, [p], max_new_tokens=8)[0] for p in PROMPTS]
    assert expected in alone
    assert generate(model, tok, PROMPTS, max_new_tokens=8, batch_size=4) == alone


def test_a_table_of_named_fields_is_one_request_per_row():
    """What the registered pyfunc gets from MLflow once its signature is enforced: rows of
    REQUEST_FIELDS, empty cells as None or NaN, messages as lists or arrays."""
    import numpy as np

    from models.data.formats import DataError
    from models.evaluation.serving import requests_from_rows

    conversation = [{"role": "user", "content": "a b"}]
    rows = [
        {"prompt": "x", "messages": None},
        {"prompt": float("nan"), "messages": np.array(conversation, dtype=object)},
    ]
    assert requests_from_rows(rows, "chat") == ["x", conversation]
    # A bare list of messages: one message per row, one conversation.
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert requests_from_rows(messages, "chat") == [messages]
    alpaca = [{"instruction": "Add", "input": "2 and 2"}, {"instruction": "Name", "input": None}]
    assert requests_from_rows(alpaca + [{"prompt": "p"}], "alpaca") == [
        {"instruction": "Add", "input": "2 and 2"},
        {"instruction": "Name"},
        "p",
    ]

    refused = {
        "no request: a chat adapter takes one of prompt": ([], "chat"),
        "request 0: a chat adapter takes one of prompt .*got fields \\[.messages., .prompt.\\]": (
            [{"prompt": "x", "messages": conversation}],
            "chat",
        ),
        "request 1: an alpaca adapter takes one of prompt .*got fields \\['input'\\]": (
            [{"prompt": "x"}, {"input": "y"}],
            "alpaca",
        ),
        "role/content rows is one conversation": ([{"role": "user", "prompt": "x"}], "chat"),
    }
    for message, (table, fmt) in refused.items():
        with pytest.raises(DataError, match=message):
            requests_from_rows(table, fmt)
