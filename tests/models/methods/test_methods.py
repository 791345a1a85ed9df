"""What each adapter method must guarantee, checked exactly on a tiny model."""

import pytest
import torch

from models.base_model.loading import load_base
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


ALL_TRAINABLE_ON_CPU = ["lora", "lora_fa", "vera", "delta_lora", "lora_plus", "dora", "rslora"]


def trained(tiny_base, method, steps=3, **kw):
    """(model, tokenizer, ids, mask) after a few optimizer steps, method hooks included."""
    from models.methods.delta_lora import DeltaUpdate

    base, tok = load_base(str(tiny_base))
    s = spec(**kw)
    m = get_method(method)
    model = m.build(base, s)
    ids, mask = batch(tok)
    update = DeltaUpdate(model, s.delta_scale) if method == "delta_lora" else None
    params = (
        m.param_groups(model, 1e-2, s)
        if m.param_groups
        else [p for p in model.parameters() if p.requires_grad]
    )
    opt = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    for _ in range(steps):
        model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        if update:
            update.step()
    model.eval()
    return model, tok, ids, mask, opt


@pytest.mark.parametrize("method", ALL_TRAINABLE_ON_CPU)
def test_every_method_starts_at_the_base_and_merges_exactly(tiny_base, method):
    base, tok = load_base(str(tiny_base))
    ids, mask = batch(tok)
    with torch.no_grad():
        expected = base(input_ids=ids, attention_mask=mask).logits.clone()
    fresh = get_method(method).build(base, spec())
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids, attention_mask=mask).logits, expected)

    model, tok, ids, mask, _ = trained(tiny_base, method)
    with torch.no_grad():
        adapted = model(input_ids=ids, attention_mask=mask).logits.clone()
        assert not torch.allclose(adapted, expected)  # training changed something
        merged = model.merge_and_unload()(input_ids=ids, attention_mask=mask).logits
    assert (merged - adapted).abs().max().item() < 1e-4


def test_vera_trains_only_the_scaling_vectors(tiny_base):
    base, _ = load_base(str(tiny_base))
    model = get_method("vera").build(base, spec(r=16))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all("vera_lambda_b" in n or "vera_lambda_d" in n for n in trainable)
    from peft.tuners.vera import VeraLayer

    layers = [m for m in model.modules() if isinstance(m, VeraLayer)]
    assert sum(p.numel() for p in trainable.values()) == sum(
        m.get_base_layer().out_features + 16 for m in layers
    )
    assert all(torch.count_nonzero(p) == 0 for n, p in trainable.items() if "lambda_b" in n)
    # One pair of frozen random projections shared by every layer.
    assert len({id(m.vera_A["default"]) for m in layers}) == 1


def test_delta_lora_moves_w_by_the_change_of_ba(tiny_base):
    from models.methods.delta_lora import DeltaUpdate

    base, tok = load_base(str(tiny_base))
    s = spec(delta_scale=0.5)
    model = get_method("delta_lora").build(base, s)
    layer = next(m for m in model.modules() if hasattr(m, "lora_A") and "default" in m.lora_A)
    w, a, b = (
        layer.get_base_layer().weight,
        layer.lora_A["default"].weight,
        layer.lora_B["default"].weight,
    )
    w0, ba0 = w.detach().clone(), (b @ a).detach().clone()
    update = DeltaUpdate(model, s.delta_scale)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids, mask = batch(tok)
    model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
    opt.step()
    update.step()
    expected = w0 + 0.5 * ((b @ a).detach() - ba0)
    assert torch.allclose(w.detach(), expected, atol=1e-7)
    assert not torch.equal(w.detach(), w0)


def test_delta_lora_saved_adapter_rebuilds_the_trained_model(tiny_base, tmp_path):
    from models.evaluation.serving import load_adapted
    from models.methods.delta_lora import before_save

    model, tok, ids, mask, _ = trained(tiny_base, "delta_lora", steps=5)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits.clone()
    before_save(model, spec())
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    # The unmodified base from disk + the adapter alone reproduces the trained model.
    reloaded, _ = load_adapted(str(tiny_base), tmp_path)
    with torch.no_grad():
        got = reloaded(input_ids=ids, attention_mask=mask).logits
        merged = reloaded.merge_and_unload()(input_ids=ids, attention_mask=mask).logits
    assert (got - expected).abs().max().item() < 1e-4
    assert (merged - expected).abs().max().item() < 1e-4


def test_lora_plus_gives_b_ratio_times_the_learning_rate(tiny_base):
    _, _, _, _, opt = trained(tiny_base, "lora_plus", steps=1, loraplus_lr_ratio=16.0)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["lora_A"]["lr"] == pytest.approx(1e-2)
    assert groups["lora_B"]["lr"] == pytest.approx(16e-2)
    assert len(groups["lora_A"]["params"]) == len(groups["lora_B"]["params"]) > 0


def _qlora_spec_of_nothing(tmp_path, **fields):
    """A qlora CheckSpec whose base and data do not exist: a method check must come first."""
    from models.config.specs import CheckSpec, DataSpec

    data = DataSpec(
        path=str(tmp_path / "missing"),
        train_file="t",
        eval_file="e",
        prompt_field="p",
        completion_field="c",
        max_seq_len=64,
        too_long="reject",
    )
    return CheckSpec(
        base_model=str(tmp_path / "missing"),
        data=data,
        method="qlora",
        target_modules="all-linear",
        **fields,
    )


def test_dora_trains_magnitudes_and_rslora_scales_by_sqrt_r(tiny_base):
    dora = get_method("dora").build(load_base(str(tiny_base))[0], spec())
    names = [n for n, p in dora.named_parameters() if p.requires_grad]
    assert any("lora_magnitude_vector" in n for n in names)
    rs = get_method("rslora").build(load_base(str(tiny_base))[0], spec(r=4, alpha=8.0))
    from peft.tuners.lora import LoraLayer

    layer = next(m for m in rs.modules() if isinstance(m, LoraLayer))
    assert layer.scaling["default"] == pytest.approx(8.0 / 2.0)


def test_qlora_is_rejected_without_cuda_before_loading(monkeypatch, tmp_path):
    from models import checks
    from models.base_model.loading import ModelError

    monkeypatch.setattr(checks, "cuda_available", lambda: False)
    with pytest.raises(ModelError, match="qlora needs a CUDA GPU"):
        # Nothing exists at these paths: the method check must come first.
        checks.check_inputs(_qlora_spec_of_nothing(tmp_path))


@pytest.mark.parametrize(
    ("cuda", "bnb", "bf16", "why"),
    [
        (False, "0.49.0", True, "needs CUDA GPUs (bitsandbytes' 4-bit kernels)"),
        (True, None, True, "needs bitsandbytes >= 0.43 (4-bit weights stored in the compute "
         "dtype, which FSDP can shard; got none installed)"),
        (True, "0.42.0", True, "got 0.42.0"),
        (True, "0.49.0", False, "needs GPUs with bfloat16"),
    ],
)  # fmt: skip
def test_sharded_qlora_is_refused_in_one_line_where_it_cannot_run(
    monkeypatch, tmp_path, cuda, bnb, bf16, why
):
    from models import checks
    from models.base_model.loading import ModelError

    monkeypatch.setattr(checks, "cuda_available", lambda: cuda)
    monkeypatch.setattr(checks, "bitsandbytes_version", lambda: bnb)
    monkeypatch.setattr(checks, "bf16_gpu", lambda: bf16)
    with pytest.raises(ModelError) as err:  # before anything is read or loaded
        checks.check_inputs(_qlora_spec_of_nothing(tmp_path, sharding="fsdp"))
    message = str(err.value)
    assert message.startswith("training.sharding fsdp with adapter.method qlora needs ")
    assert why in message and "\n" not in message


def test_sharded_qlora_stores_its_4bit_weights_in_the_compute_dtype():
    """FSDP shards float weights only: bnb_4bit_quant_storage = the compute dtype when sharded
    (uint8, bitsandbytes' default, otherwise)."""
    from models.methods.qlora import load_kwargs

    sharded = load_kwargs(sharded=True)["quantization_config"]
    assert sharded.bnb_4bit_quant_storage == sharded.bnb_4bit_compute_dtype
    assert sharded.bnb_4bit_quant_storage.is_floating_point
    assert load_kwargs()["quantization_config"].bnb_4bit_quant_storage == torch.uint8
