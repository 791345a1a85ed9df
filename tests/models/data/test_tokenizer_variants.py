"""Tokenizers as real bases ship them, on every architecture of the matrix: without a pad token,
adding a BOS or not (also a BOS that is the EOS, as GPT-2 and Pythia have), without an EOS among
its special tokens. Never two BOS, the EOS always ends the example and is in the loss.

Only the base's config enters the tokenizer path (its eos_token_id, where the tokenizer has no
EOS), so every architecture runs every variant at the tokenizer level (no weights read), and two
of them (GPT-2's Conv1D, OPT's learned positions) also train and serve with the hardest variant.
"""

from __future__ import annotations

import json

import pytest

from models.config.specs import DataSpec
from models.data.chat import CHATML, encode_request, prepare_tokenizer
from models.data.formats import Example
from models.data.splits import tokenize
from tests.architectures import NAMES


def _adds(token_attr: str):
    def change(tok):
        from tokenizers import processors

        token = getattr(tok, token_attr)
        tok._tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{token} $A", special_tokens=[(token, tok.convert_tokens_to_ids(token))]
        )

    return change


def _no_pad(tok):
    tok.pad_token = None


def _no_eos(tok):
    tok.eos_token = None


def _bos_is_eos(tok):
    tok.bos_token = tok.eos_token
    _adds("bos_token")(tok)


VARIANTS = {
    "as_shipped": [],
    "no_pad": [_no_pad],
    "adds_bos": [_adds("bos_token")],
    "eos_not_special": [_no_eos],
    "bos_is_eos_added": [_bos_is_eos, _no_pad],
    "all_three": [_adds("bos_token"), _no_pad, _no_eos],
}
EXAMPLES = {
    "prompt_completion": Example("Reverse the words: red cat\nAnswer:", " cat red", 1),
    "text": Example("", "The cat sat on the mat.", 2),
    "chat": Example(
        "",
        "cat red",
        3,
        (
            {"role": "user", "content": "Reverse the words: red cat"},
            {"role": "assistant", "content": "cat red"},
        ),
    ),
}
BOS_TEMPLATE = "{{ bos_token }}" + CHATML  # a template that writes the BOS itself


def variant_base(base, out, changes):
    """`base` with its tokenizer changed (weights and config linked)."""
    from transformers import AutoTokenizer

    out.mkdir(parents=True)
    for f in base.iterdir():
        if not f.name.startswith(("tokenizer", "special_tokens")):
            (out / f.name).symlink_to(f)
    tok = AutoTokenizer.from_pretrained(base)
    for change in changes:
        change(tok)
    tok.save_pretrained(out)
    return out


def prepared(base, template: str | None = None):
    from transformers import AutoTokenizer

    if template == BOS_TEMPLATE:  # data.chat_template names a file or a built-in
        (base / "bos.jinja").write_text(BOS_TEMPLATE)
        template = str(base / "bos.jinja")
    spec = DataSpec(format="chat" if template else "prompt_completion", chat_template=template)
    return prepare_tokenizer(AutoTokenizer.from_pretrained(base), spec, str(base))


@pytest.mark.parametrize("name", NAMES)
def test_every_variant_gets_one_bos_at_most_and_a_trained_eos(arch_bases, name, tmp_path):
    config_eos = json.loads((arch_bases[name] / "config.json").read_text())["eos_token_id"]
    for variant, changes in VARIANTS.items():
        base = variant_base(arch_bases[name], tmp_path / variant, changes)
        for template in (None, "chatml", BOS_TEMPLATE):
            tok = prepared(base, template)
            adds_bos = tok("a")["input_ids"][:1] == [tok.bos_token_id]
            eos, bos = tok.eos_token_id, tok.bos_token_id
            assert eos == config_eos and tok.pad_token_id is not None, variant
            examples = [EXAMPLES["chat"]] if template else [EXAMPLES["prompt_completion"]]
            examples += [] if template else [EXAMPLES["text"]]
            for feature in tokenize(examples, tok, 256, "reject").features:
                ids, labels = feature["input_ids"], feature["labels"]
                at = f"{name} {variant} {template and template[:12]}"
                assert ids[-1] == labels[-1] == eos, at  # the model learns to stop
                leading = (adds_bos or template == BOS_TEMPLATE) and bos is not None
                assert (ids[0] == bos) == leading, at
                assert ids[:2] != [bos, bos], at  # never a double BOS
                if bos != eos:
                    assert ids.count(bos) == int(leading), at
                if template:  # served as trained: the same prompt ids
                    served = encode_request(tok, list(EXAMPLES["chat"].messages[:-1]), "chat")
                    assert served == ids[: len(served)] and labels[len(served)] != -100, at


@pytest.mark.parametrize("name", ["gpt2", "opt"])
def test_the_hardest_variant_trains_and_serves(arch_bases, name, tmp_path):
    """A BOS the tokenizer adds, no pad, no EOS among its special tokens: the adapter trains,
    its saved tokenizer has the EOS and pad training used, and serving adds the BOS once."""
    from models.config.specs import TrainSpec
    from models.evaluation.serving import load_adapted
    from models.methods import AdapterSpec
    from models.training.train import train_adapter

    base = variant_base(arch_bases[name], tmp_path / "base", VARIANTS["all_three"])
    data = tmp_path / "data"
    data.mkdir()
    line = json.dumps({"prompt": "Reverse the words: red cat\nAnswer:", "completion": " cat red"})
    (data / "train.jsonl").write_text((line + "\n") * 8)
    (data / "eval.jsonl").write_text(line + "\n")
    result = train_adapter(
        TrainSpec(
            base_model=str(base),
            data=DataSpec(path=str(data), max_seq_len=64),
            method="lora",
            adapter=AdapterSpec(r=2, alpha=4.0, dropout=0.0, target_modules="all-linear", seed=0),
            max_steps=2,
            learning_rate=1e-3,
            batch_size=4,
            device="cpu",
            dtype="float32",
        ),
        output_dir=str(tmp_path / "adapter"),
    )
    _, served_tok = load_adapted(str(base), result.adapter_dir)
    config_eos = json.loads((base / "config.json").read_text())["eos_token_id"]
    assert served_tok.eos_token_id == served_tok.pad_token_id == config_eos
    served = encode_request(served_tok, "Reverse the words: red cat\nAnswer:", "prompt_completion")
    assert served[0] == served_tok.bos_token_id and served.count(served_tok.bos_token_id) == 1
