"""adapter.target_modules on eight architectures: every layer PEFT can adapt is accepted (GPT-2's
Conv1D, fused qkv_proj / gate_up_proj, query_key_value), what a method cannot adapt is refused
in one line naming the candidates, and every method trains and merges on Conv1D layers."""

from __future__ import annotations

import pytest
import torch

from models.base_model.loading import (
    ModelError,
    check_target_modules,
    layer_kinds,
    linear_layer_names,
    load_base,
)
from models.evaluation.serving import load_adapted
from models.methods import AdapterSpec, get_method
from models.training.train import train_adapter
from tests.models.methods.test_methods import ALL_TRAINABLE_ON_CPU
from tests.models.test_architectures import short_spec

LINEAR = {
    "llama": "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj",
    "qwen2": "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj",
    "mistral": "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj",
    "gemma2": "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj",
    "phi3": "down_proj, gate_up_proj, o_proj, qkv_proj",
    "gpt2": "c_attn, c_fc, c_proj",
    "gpt_neox": "dense, dense_4h_to_h, dense_h_to_4h, query_key_value",
    "opt": "fc1, fc2, k_proj, out_proj, q_proj, v_proj",
}
EMBEDDING = {"gpt2": "wte", "gpt_neox": "embed_in"}  # the others: embed_tokens
NORM = {"gpt2": "ln_f", "gpt_neox": "final_layer_norm", "opt": "final_layer_norm"}


def check(base, targets, method="lora"):
    kinds = layer_kinds(str(base))
    adapts = get_method(method).layer_kinds
    check_target_modules(targets, linear_layer_names(str(base)), kinds, method, adapts)


@pytest.mark.parametrize("name", LINEAR)
def test_every_linear_layer_and_all_linear_are_accepted_by_every_method(arch_bases, name):
    assert ", ".join(linear_layer_names(str(arch_bases[name]))) == LINEAR[name]
    for method in ALL_TRAINABLE_ON_CPU:
        check(arch_bases[name], LINEAR[name].split(", "), method)
        check(arch_bases[name], "all-linear", method)


@pytest.mark.parametrize("name", LINEAR)
def test_refusals_name_the_kind_and_the_candidates_in_one_line(arch_bases, name):
    base, candidates = arch_bases[name], LINEAR[name]
    embedding = EMBEDDING.get(name, "embed_tokens")
    check(base, [embedding], "lora")  # PEFT's LoRA adapts embeddings
    with pytest.raises(ModelError) as e:
        check(base, [embedding], "vera")
    assert str(e.value) == (
        f"adapter.target_modules ['{embedding}'] are Embedding layers, not Linear; "
        f"adapter.method vera adapts Linear layers only; its linear layers are: {candidates}"
    )
    norm = NORM.get(name, "norm")
    with pytest.raises(ModelError) as e:
        check(base, [norm], "lora")
    kind = "LayerNorm" if name in NORM else type(load_base(str(base))[0].model.norm).__name__
    assert str(e.value) == (
        f"adapter.target_modules ['{norm}'] are {kind} layers, not Linear and Embedding; "
        f"adapter.method lora adapts Linear and Embedding layers only; "
        f"its linear layers are: {candidates}"
    )
    with pytest.raises(ModelError, match=r"\['nope'\] match no module of the base model; its"):
        check(base, ["nope"])


@pytest.mark.parametrize("method", ["lora_fa", "lora_plus", "delta_lora", "dora", "vera"])
def test_methods_that_adapt_linear_layers_only_refuse_embeddings(arch_bases, method):
    with pytest.raises(ModelError, match=f"adapter.method {method} adapts Linear layers only"):
        check(arch_bases["gpt2"], ["wte", "c_attn"], method)


def spec(targets="all-linear", dropout=0.0):
    return AdapterSpec(r=4, alpha=8.0, dropout=dropout, target_modules=targets, seed=0)


def ids_of(tokenizer):
    return tokenizer(["Repeat the words: red cat\nAnswer:"], return_tensors="pt").input_ids


@pytest.mark.parametrize("name", ["gpt2", "phi3"])
@pytest.mark.parametrize("method", ALL_TRAINABLE_ON_CPU)
def test_every_method_trains_saves_and_merges_on_conv1d_and_fused_layers(
    arch_bases, tiny_data, tmp_path, name, method
):
    """Through the Trainer (the methods' hooks included): the saved adapter on the base from
    disk moves the model, and merging it gives the same logits."""
    base = str(arch_bases[name])
    adapter = spec()
    result = train_adapter(
        short_spec(base, tiny_data, adapter=adapter, method=method, max_steps=1),
        output_dir=tmp_path,
    )
    model, tokenizer = load_adapted(base, result.adapter_dir)
    plain, _ = load_base(base)
    ids = ids_of(tokenizer)
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        assert (adapted - plain(input_ids=ids).logits).abs().max() > 1e-4
        merged = model.merge_and_unload()(input_ids=ids).logits
    torch.testing.assert_close(merged, adapted, atol=1e-4, rtol=1e-4)


def test_delta_lora_moves_a_conv1d_weight_in_its_transposed_layout(arch_bases):
    """GPT-2 stores W as (in, out): the base update is (B A)^T, and the saved adapter on the
    unmodified base reproduces the trained model (the telescoping sum of delta_lora)."""
    from models.methods.delta_lora import DeltaUpdate

    base, tokenizer = load_base(str(arch_bases["gpt2"]))
    model = get_method("delta_lora").build(base, spec(["c_attn"]))
    update = DeltaUpdate(model, 0.5)
    layer = model.base_model.model.transformer.h[0].attn.c_attn
    w0 = layer.get_base_layer().weight.detach().clone()
    ids = ids_of(tokenizer)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        update.step()
    ba = layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    torch.testing.assert_close(layer.get_base_layer().weight, w0 + 0.5 * ba.T, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["lora", "rslora"])
def test_lora_on_an_embedding_trains_and_merges(arch_bases, tiny_data, tmp_path, method):
    base = str(arch_bases["llama"])
    adapter = spec(["embed_tokens", "q_proj"])
    train_spec = short_spec(base, tiny_data, adapter=adapter, method=method, max_steps=1)
    result = train_adapter(train_spec, output_dir=tmp_path)
    model, tokenizer = load_adapted(base, result.adapter_dir)
    assert any("lora_embedding_A" in n for n, _ in model.named_parameters())
    ids = ids_of(tokenizer)
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        merged = model.merge_and_unload()(input_ids=ids).logits
    torch.testing.assert_close(merged, adapted, atol=1e-4, rtol=1e-4)
