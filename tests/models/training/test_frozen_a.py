"""LoRA-FA's frozen-A adapter path (models.training.frozen_a) against PEFT's own layers."""

import pytest
import torch

from models.base_model.loading import load_base
from models.methods import AdapterSpec, get_method
from models.methods.base import build_lora
from models.training.frozen_a import frozen_a_update, keep_mask, pack_bits, unpack_bits
from tests.models.methods.test_methods import adapted_linears, batch

SPEC = AdapterSpec(r=4, alpha=8.0, dropout=0.1, target_modules=["q_proj", "v_proj"], seed=0)


@pytest.mark.parametrize("shape", [(8,), (3, 5), (2, 7, 9), (1, 64)])
def test_mask_bits_round_trip_exactly(shape):
    mask = torch.rand(shape, generator=torch.manual_seed(1)) > 0.4
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-mask.numel() // 8)
    assert torch.equal(unpack_bits(packed, mask.shape), mask)
    assert pack_bits(torch.tensor([True, False, False, False, False, False, False, True])).item()


class SameMaskDropout(torch.nn.Module):
    """PEFT's dropout, drawing its keep mask as the frozen-A path does (same RNG calls)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x):
        return x * keep_mask(x, self.p) / (1 - self.p) if self.training else x


def peft_frozen_a(tiny_base, spec):
    """PEFT's LoRA with every lora_A frozen: the path LoRA-FA replaced."""
    model = build_lora(load_base(str(tiny_base))[0], spec)
    for layer in adapted_linears(model):
        layer.lora_A["default"].weight.requires_grad_(False)
        layer.lora_dropout["default"] = SameMaskDropout(spec.dropout)
    return model


def b_grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if ".lora_B." in n}


@pytest.mark.parametrize("dropout", [0.1, 0.0])
def test_losses_and_b_gradients_equal_peft_frozen_a(tiny_base, dropout):
    spec = AdapterSpec(**{**SPEC.__dict__, "dropout": dropout})
    ours = get_method("lora_fa").build(load_base(str(tiny_base))[0], spec)
    reference = peft_frozen_a(tiny_base, spec)
    a_init = {n: p.detach().clone() for n, p in ours.named_parameters() if ".lora_A." in n}
    ids, mask = batch(load_base(str(tiny_base))[1])
    optimizers = [
        torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
        for m in (ours, reference)
    ]
    for step in range(3):
        results = []
        for model, opt in zip((ours, reference), optimizers, strict=True):
            model.train()
            torch.manual_seed(100 + step)  # the same dropout masks in both
            loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
            loss.backward()
            results.append((loss.item(), b_grads(model)))
            opt.step()
            opt.zero_grad()
        (loss, grads), (ref_loss, ref_grads) = results
        assert loss == pytest.approx(ref_loss, rel=1e-6)
        assert grads.keys() == ref_grads.keys() and len(grads) == 4
        for name, grad in grads.items():
            torch.testing.assert_close(grad, ref_grads[name], rtol=1e-5, atol=1e-7)
        assert any(g.abs().max() > 0 for g in grads.values())
    params = dict(ours.named_parameters())
    for name, a in a_init.items():
        assert torch.equal(params[name], a) and params[name].grad is None, name
    ours.eval()
    reference.eval()
    with torch.no_grad():
        got = ours(input_ids=ids, attention_mask=mask).logits
        expected = reference(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_saves_only_a_of_dropped_x_and_the_mask_bits():
    """Per token: r floats of A drop(x) and in_features / 8 bytes of mask; nothing of x's size."""
    tokens, d_in, d_out, r = 6 * 16, 64, 48, 4
    x = torch.randn(6, 16, d_in, requires_grad=True)
    a = torch.randn(r, d_in)
    b = torch.randn(d_out, r, requires_grad=True)
    for p, expected in ((0.1, tokens * r * 4 + tokens * d_in // 8), (0.0, tokens * r * 4)):
        saved = []

        def pack(t, saved=saved):
            if t.data_ptr() not in (a.data_ptr(), b.data_ptr()):  # the weights are no activations
                saved.append(t.untyped_storage().nbytes())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = frozen_a_update(x, a, b, p, 2.0)
        assert sum(saved) == expected
        y.sum().backward()
    assert x.grad is not None and b.grad is not None


def test_autocast_computes_in_the_autocast_dtype_and_grads_keep_the_weights_dtype():
    x = torch.randn(2, 5, 32, requires_grad=True)
    a = torch.randn(4, 32)
    b = torch.randn(16, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = frozen_a_update(x, a, b, 0.1, 1.0)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and b.grad.dtype == torch.float32


def test_trained_adapter_loads_and_merges_in_plain_peft(tiny_base, tmp_path):
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    base, tok = load_base(str(tiny_base))
    model = get_method("lora_fa").build(base, SPEC)
    ids, mask = batch(tok)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits.clone()
    model.save_pretrained(tmp_path)
    plain = PeftModel.from_pretrained(load_base(str(tiny_base))[0], str(tmp_path))
    layers = [m for m in plain.modules() if isinstance(m, LoraLayer)]
    assert layers and not any(m.lora_variant for m in layers)  # PEFT's own LoRA layers
    with torch.no_grad():
        got = plain(input_ids=ids, attention_mask=mask).logits
        merged = model.merge_and_unload()(input_ids=ids, attention_mask=mask).logits
    assert (got - expected).abs().max().item() < 1e-5
    assert (merged - expected).abs().max().item() < 1e-4
