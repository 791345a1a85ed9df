"""The streamed merge equals PEFT's merge_and_unload, bit for bit, for every method and on the
architecture matrix (Conv1D, fused projections, tied embeddings, prefix-less hub keys)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.export.merge import MergeError, merge_adapter
from models.methods import get_method
from models.methods.base import AdapterSpec
from tests.architectures import NAMES, build_tiny
from tests.models.export.test_merge import tensors

CPU_METHODS = ["lora", "lora_fa", "lora_plus", "rslora", "delta_lora", "dora", "vera"]
# Every method on Llama; Conv1D (GPT-2) with each merge formula (LoRA, DoRA, VeRA); LoRA on
# the rest of the matrix (fused qkv of Phi-3 and GPT-NeoX, biases, OPT's projections).
CASES = (
    [("llama", m) for m in CPU_METHODS]
    + [("gpt2", m) for m in ("lora", "dora", "vera")]
    + [(arch, "lora") for arch in NAMES if arch not in ("llama", "gpt2")]
)


def random_adapter(base_dir, method, out, targets="all-linear", seed=1):
    """A method's adapter with every adapter tensor random (B != 0, DoRA magnitudes and VeRA
    vectors moved), saved as training saves it (the method's before_save hook included)."""
    from models.base_model.loading import load_base

    model, tok = load_base(str(base_dir))
    spec = AdapterSpec(r=4, alpha=8.0, dropout=0.0, target_modules=targets, seed=0)
    m = get_method(method)
    peft_model = m.build(model, spec)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if ("lora_" in name or "vera_lambda" in name) and "base_layer" not in name:
                shift = 1.0 if "magnitude" in name else 0.0
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + shift)
    if m.before_save:
        m.before_save(peft_model, spec)
    peft_model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def peft_reference(base_dir, adapter_dir):
    """(merge_and_unload's state dict, the unmerged adapted model's logits, the input ids)."""
    from peft import PeftModel

    from models.base_model.loading import load_base

    base, tok = load_base(str(base_dir))
    adapted = PeftModel.from_pretrained(base, str(adapter_dir))
    adapted.eval()
    ids = tok(["the red cat sat on the mat"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = adapted(input_ids=ids).logits
    return adapted.merge_and_unload().state_dict(), logits, ids


def exported_logits(path, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def assert_equal_to_peft(out, reference):
    """The export, loaded by transformers (which maps legacy checkpoint names), holds exactly
    merge_and_unload's tensors."""
    from transformers import AutoModelForCausalLM

    got = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    assert set(got) == set(reference)
    assert [k for k in got if not torch.equal(got[k], reference[k])] == []


@pytest.mark.parametrize("arch,method", CASES)
def test_streamed_merge_is_peft_merge_bit_for_bit(arch_bases, tmp_path, arch, method):
    base = arch_bases[arch]
    adapter = random_adapter(base, method, tmp_path / "adapter")
    reference, adapted_logits, ids = peft_reference(base, adapter)
    out = tmp_path / "merged"
    merge_adapter(base_model=str(base), adapter_dir=adapter, out_dir=out, max_shard_size="60KB")
    assert_equal_to_peft(out, reference)
    assert set(tensors(out)) == set(tensors(base))  # the base's own names, nothing added
    torch.testing.assert_close(exported_logits(out, ids), adapted_logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("targets", [["embed_tokens", "q_proj"], ["lm_head", "v_proj"]])
def test_tied_embeddings(tiny_base, tmp_path, targets):
    """A tied base stores the embedding once; an update of either tied layer reaches it, and
    the export stays tied (lm_head is not written)."""
    base = tmp_path / "tied"
    shutil.copytree(tiny_base, base)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    weights = load_file(base / "model.safetensors")
    weights.pop("lm_head.weight", None)
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
    adapter = random_adapter(base, "lora", tmp_path / "adapter", targets=targets)
    reference, _, _ = peft_reference(base, adapter)
    out = tmp_path / "merged"
    merge_adapter(base_model=str(base), adapter_dir=adapter, out_dir=out)
    assert "lm_head.weight" not in tensors(out)
    embedding = "model.embed_tokens.weight"
    assert not torch.equal(tensors(out)[embedding], weights[embedding])  # the update reached it
    assert_equal_to_peft(out, reference)
    # No logits check against the unmerged model here: unmerged, PEFT's embedding update
    # changes the input embedding only, merged it changes the tied lm_head too (in PEFT's
    # merge_and_unload as here).


def test_hub_style_keys_without_the_model_prefix(tiny_base, tmp_path):
    """The hub's GPT-2 stores h.0.attn.c_attn.weight for transformer.h.0.attn.c_attn.weight."""
    base = build_tiny("gpt2", tmp_path / "gpt2", tiny_base)
    adapter = random_adapter(base, "dora", tmp_path / "adapter")
    reference, _, _ = peft_reference(base, adapter)
    weights = load_file(base / "model.safetensors")
    save_file(
        {k.removeprefix("transformer."): v for k, v in weights.items()},
        base / "model.safetensors",
        metadata={"format": "pt"},
    )
    out = tmp_path / "merged"
    merge_adapter(base_model=str(base), adapter_dir=adapter, out_dir=out)
    assert "h.0.attn.c_attn.weight" in tensors(out)  # the base's own names
    assert_equal_to_peft(out, reference)


def test_an_adapter_of_another_base_is_refused_before_anything_is_written(arch_bases, tmp_path):
    adapter = random_adapter(arch_bases["gpt2"], "lora", tmp_path / "adapter")
    out = tmp_path / "merged"
    with pytest.raises(MergeError, match=r"changes transformer\.h\.0\.attn\.c_attn\.weight"):
        merge_adapter(base_model=str(arch_bases["llama"]), adapter_dir=adapter, out_dir=out)
    assert not out.exists()
