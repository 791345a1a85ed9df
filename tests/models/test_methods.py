"""What each adapter method must guarantee, checked exactly on a tiny model."""

import pytest
import torch

from models.loading import load_base
from models.methods import METHODS, AdapterSpec, get_method

TARGETS = ["q_proj", "v_proj"]


def spec(**kw):
    return AdapterSpec(
        **{"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": TARGETS, "seed": 0, **kw}
    )


def batch(tokenizer):
    ids = tokenizer(["the red cat sat on the mat", "a blue dog"], padding=True, return_tensors="pt")
    return ids["input_ids"], ids["attention_mask"]


def step(model, ids, mask, steps=3):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return opt


def adapted_linears(model):
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def test_registry_lists_methods_and_rejects_unknown():
    assert {"lora", "lora_fa"} <= set(METHODS)
    with pytest.raises(ValueError, match="unknown adapter method 'nope'"):
        get_method("nope")


@pytest.mark.parametrize("method", ["lora", "lora_fa"])
def test_adapted_model_equals_base_at_init(tiny_base, method):
    base, tok = load_base(str(tiny_base))
    ids, mask = batch(tok)
    with torch.no_grad():
        expected = base(input_ids=ids, attention_mask=mask).logits.clone()
    model = get_method(method).build(base, spec())
    model.eval()
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits
    # B starts at zero, so the update B A is exactly zero.
    assert torch.equal(got, expected)


def test_lora_trains_a_and_b_only(tiny_base):
    base, tok = load_base(str(tiny_base))
    model = get_method("lora").build(base, spec())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    layers = adapted_linears(model)
    expected = sum(4 * (m.in_features + m.out_features) for m in layers)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


def test_lora_fa_keeps_a_bit_identical_and_trains_only_b(tiny_base):
    base, tok = load_base(str(tiny_base))
    model = get_method("lora_fa").build(base, spec())
    a_before = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_A." in n}
    b_before = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_B." in n}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(trainable) == sorted(b_before)
    layers = adapted_linears(model)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == sum(
        4 * m.out_features for m in layers
    )
    ids, mask = batch(tok)
    opt = step(model, ids, mask)
    params = dict(model.named_parameters())
    for n, before in a_before.items():
        assert torch.equal(params[n], before), n
        assert params[n].grad is None
    assert any(not torch.equal(params[n], b) for n, b in b_before.items())
    # Optimizer state exists only for the B matrices.
    with_state = {id(p) for p in opt.state}
    assert with_state == {id(params[n]) for n in b_before}


def test_same_seed_same_adapter_init(tiny_base):
    first = get_method("lora").build(load_base(str(tiny_base))[0], spec(seed=3))
    second = get_method("lora").build(load_base(str(tiny_base))[0], spec(seed=3))
    other = get_method("lora").build(load_base(str(tiny_base))[0], spec(seed=4))
    a = {n: p for n, p in first.named_parameters() if "lora_A" in n}
    b = {n: p for n, p in second.named_parameters() if "lora_A" in n}
    c = {n: p for n, p in other.named_parameters() if "lora_A" in n}
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)
