"""Merging an adapter into its base: a plain transformers model computing what the adapter did."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open

from models.evaluation.serving import load_adapted
from models.export.merge import merge_adapter
from models.methods import get_method
from tests.models.methods.test_methods import spec, trained


def saved_adapter(tiny_base, method, out_dir):
    """A method's adapter after a few optimizer steps, saved the way training saves it."""
    model, tok, ids, mask, _ = trained(tiny_base, method, steps=3)
    hook = get_method(method).before_save
    if hook:
        hook(model, spec())
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return ids, mask


def load_merged(path, dtype=None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, **({"dtype": dtype} if dtype else {}))
    model.eval()
    return model, AutoTokenizer.from_pretrained(path)


def tensors(path) -> dict[str, torch.Tensor]:
    out = {}
    for shard in sorted(path.glob("*.safetensors")):
        with safe_open(shard, "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118 - not a dict
    return out


@pytest.mark.parametrize("method", ["lora", "dora", "vera", "delta_lora"])
def test_merged_model_computes_what_the_adapted_model_does(tiny_base, tmp_path, method):
    ids, mask = saved_adapter(tiny_base, method, tmp_path / "adapter")
    adapted, _ = load_adapted(str(tiny_base), tmp_path / "adapter")
    base, _ = load_merged(tiny_base)
    with torch.no_grad():
        expected = adapted(input_ids=ids, attention_mask=mask).logits
        untouched = base(input_ids=ids, attention_mask=mask).logits
    assert (expected - untouched).abs().max().item() > 1e-3  # the adapter changes the model

    files = merge_adapter(
        base_model=str(tiny_base), adapter_dir=tmp_path / "adapter", out_dir=tmp_path / "merged"
    )
    out = tmp_path / "merged"
    assert files == sorted(p for p in out.rglob("*") if p.is_file())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in files}
    # A plain model: no adapter weights, the base's own parameter names, no exporter's path.
    weights = tensors(out)
    assert set(weights) == set(tensors(tiny_base))
    assert json.loads((out / "config.json").read_text()).get("_name_or_path", "") == ""

    merged, tok = load_merged(out)
    with torch.no_grad():
        got = merged(input_ids=ids, attention_mask=mask).logits
    assert (got - expected).abs().max().item() < 1e-4
    assert tok("the red cat")["input_ids"] == load_merged(tiny_base)[1]("the red cat")["input_ids"]


def test_dtype_is_applied_once_after_an_fp32_merge(tiny_base, tmp_path):
    saved_adapter(tiny_base, "lora", tmp_path / "adapter")
    fp32 = tmp_path / "fp32"
    merge_adapter(base_model=str(tiny_base), adapter_dir=tmp_path / "adapter", out_dir=fp32)
    bf16 = tmp_path / "bf16"
    merge_adapter(
        base_model=str(tiny_base), adapter_dir=tmp_path / "adapter", out_dir=bf16, dtype="bfloat16"
    )
    full, half = tensors(fp32), tensors(bf16)
    assert {t.dtype for t in full.values()} == {torch.float32}  # 'auto': the base's own dtype
    assert {t.dtype for t in half.values()} == {torch.bfloat16}
    # Rounding happens once: the bf16 export is the fp32 merge rounded, bit for bit.
    assert all(torch.equal(half[k], full[k].to(torch.bfloat16)) for k in full)
    assert load_merged(bf16)[0].dtype == torch.bfloat16


def test_auto_dtype_follows_the_base_config(tiny_base, tmp_path):
    """A base published in bf16 is exported in bf16 when dtype is 'auto'."""
    base = tmp_path / "bf16-base"
    shutil.copytree(tiny_base, base)
    config = json.loads((base / "config.json").read_text())
    config["dtype"] = "bfloat16"
    (base / "config.json").write_text(json.dumps(config))
    saved_adapter(tiny_base, "lora", tmp_path / "adapter")
    out = tmp_path / "merged"
    merge_adapter(base_model=str(base), adapter_dir=tmp_path / "adapter", out_dir=out)
    assert {t.dtype for t in tensors(out).values()} == {torch.bfloat16}


def test_a_new_export_replaces_stale_shards(tiny_base, tmp_path):
    saved_adapter(tiny_base, "lora", tmp_path / "adapter")
    out = tmp_path / "merged"
    sharded = merge_adapter(
        base_model=str(tiny_base),
        adapter_dir=tmp_path / "adapter",
        out_dir=out,
        max_shard_size="200KB",
    )
    shards = [p for p in sharded if p.suffix == ".safetensors"]
    assert len(shards) > 1 and (out / "model.safetensors.index.json").is_file()
    sharded_weights = tensors(out)
    one = merge_adapter(base_model=str(tiny_base), adapter_dir=tmp_path / "adapter", out_dir=out)
    assert [p.name for p in one if p.suffix == ".safetensors"] == ["model.safetensors"]
    assert not (out / "model.safetensors.index.json").exists()  # nothing left from the first
    assert sorted(p for p in out.rglob("*") if p.is_file()) == one
    single = tensors(out)
    assert set(single) == set(sharded_weights)
    assert all(torch.equal(single[k], sharded_weights[k]) for k in single)
