"""The chunked loss is the model's own loss, with its gradients, on real architectures; and it is
refused (or, on auto, left off) where a base post-processes its logits."""

from __future__ import annotations

import pytest
import torch
import transformers

from models.base_model import chunked_loss
from models.base_model.chunked_loss import causal_lm_loss, refusal, token_losses
from models.data.packing import pack_batch
from models.data.splits import pad_batch
from tests.architectures import ARCHITECTURES

VOCAB = 300
# Architectures whose head differs: Llama's lm_head, Qwen2's, GPT-2's Conv1D blocks under
# `transformer`, GPT-NeoX's `embed_out`, Phi-3's fused projections.
EXACT = ("llama", "qwen2", "gpt2", "gpt_neox", "phi3")
REL = 1e-5


def tiny(name: str, seed: int = 0, **extra) -> torch.nn.Module:
    config_class, settings = ARCHITECTURES[name]
    config = getattr(transformers, config_class)(
        vocab_size=VOCAB, pad_token_id=0, tie_word_embeddings=False, **{**settings, **extra}
    )
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config)


def adapted(model: torch.nn.Module) -> torch.nn.Module:
    """LoRA on every linear layer, the output head included (PEFT's all-linear leaves it out),
    B random (not 0) so every adapter weight gets a gradient; dropout 0 so both paths compute
    the same function."""
    from peft import LoraConfig, get_peft_model

    linear = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    conv1d = {n.split(".")[-1] for n, m in model.named_modules() if type(m).__name__ == "Conv1D"}
    torch.manual_seed(1)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=sorted(linear | conv1d),
        init_lora_weights=False,
    )
    return get_peft_model(model, config)


def batch(packing: bool) -> dict[str, torch.Tensor]:
    """Examples of different lengths; the first 3 tokens of each are prompt (label -100)."""
    gen = torch.Generator().manual_seed(2)
    features = []
    for n in (17, 9, 30, 4):
        ids = torch.randint(3, VOCAB, (n,), generator=gen).tolist()
        features.append({"input_ids": ids, "labels": [-100] * 3 + ids[3:]})
    if packing:
        return pack_batch(features, row_len=40)
    return pad_batch(features, pad_id=0)


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return out


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("name", EXACT)
def test_loss_and_gradients_equal_the_models_own(name, packing, monkeypatch):
    # Chunks of 7 tokens: many chunks, the last one partial.
    monkeypatch.setattr(chunked_loss, "CHUNK_BYTES", 7 * 4 * VOCAB)
    model = adapted(tiny(name))
    inputs = batch(packing)
    own = model(**inputs).loss
    own.backward()
    expected = grads(model)
    loss = causal_lm_loss(model, inputs)
    loss.backward()
    got = grads(model)
    assert refusal(model) is None
    assert abs(loss.item() - own.item()) <= REL * abs(own.item())
    # The adapted head trains through the chunked path.
    assert any("lm_head.lora" in n or "embed_out.lora" in n for n in got)
    for n, g in expected.items():
        assert g.abs().max() > 0, n
        assert (got[n] - g).abs().max() <= REL * g.abs().max(), n


@pytest.mark.parametrize("name", ["llama", "gpt_neox"])
def test_evaluation_token_losses_equal_the_full_logits_ones(name, monkeypatch):
    monkeypatch.setattr(chunked_loss, "CHUNK_BYTES", 5 * 4 * VOCAB)
    model = tiny(name).eval()
    inputs = batch(packing=False)
    labels = inputs.pop("labels")
    with torch.no_grad():
        logits = model(**inputs).logits[:, :-1].float()
    expected = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none"
    )
    got = token_losses(model, inputs, labels)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= REL * expected.abs().max()
    assert (got[labels[:, 1:] == -100] == 0).all()


def test_a_base_that_softcaps_its_logits_is_named_and_auto_leaves_it_off():
    from models.training.loss import use_chunked_loss

    gemma2 = tiny("gemma2", head_dim=8, sliding_window=64)
    assert gemma2.config.final_logit_softcapping
    reason = refusal(gemma2)
    assert reason is not None and "final_logit_softcapping=" in reason
    big = chunked_loss.chunk_tokens(VOCAB) + 1  # a batch of more than one chunk
    assert use_chunked_loss("auto", gemma2, big) is False
    assert use_chunked_loss("auto", tiny("llama"), big) is True
    assert use_chunked_loss("on", tiny("llama"), 1) is True
    assert use_chunked_loss("off", tiny("llama"), big) is False
    # Where one chunk holds a whole batch's logits, auto keeps the plain path (same memory).
    assert use_chunked_loss("auto", tiny("llama"), big - 1) is False
    # Data-parallel training and Liger keep the model's own forward.
    assert use_chunked_loss("auto", tiny("llama"), big, world_size=2) is False
    assert use_chunked_loss("auto", tiny("llama"), big, kernels="liger") is False


@pytest.mark.parametrize(
    ("config_class", "settings"),
    [
        ("CohereConfig", {"logit_scale": 0.0625}),
        ("GraniteConfig", {"logits_scaling": 8.0}),
        ("Gemma2Config", {"head_dim": 8, "sliding_window": 64, "final_logit_softcapping": 30.0}),
    ],
)
def test_post_processing_is_found_by_running_the_model_without_the_attribute_list(
    config_class, settings, monkeypatch
):
    """An architecture whose attribute is not listed is still caught: the two paths' logits
    differ (here with the list emptied)."""
    config = getattr(transformers, config_class)(
        vocab_size=VOCAB, pad_token_id=0, **ARCHITECTURES["llama"][1], **settings
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    assert refusal(model) is not None and "=" in refusal(model)  # named from the config
    monkeypatch.setattr(chunked_loss, "POST_PROCESSING", ())
    assert refusal(model) == (
        "its logits are not its output head applied to its decoder's last hidden state"
    )


def test_chunked_loss_on_is_refused_at_the_checks_in_one_line(arch_bases):
    from models.base_model.loading import ModelError
    from models.base_model.probes import check_chunked_loss

    with pytest.raises(ModelError) as refused:
        check_chunked_loss(str(arch_bases["gemma2"]))
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("training.chunked_loss: on is not exact for base_model ")
    assert "Gemma2ForCausalLM" in message and "final_logit_softcapping=30.0" in message
    assert message.endswith("set training.chunked_loss: auto or off")
    check_chunked_loss(str(arch_bases["llama"]))  # exact there: no error


def test_with_gradient_checkpointing_the_loss_and_gradients_stay_the_models_own(monkeypatch):
    monkeypatch.setattr(chunked_loss, "CHUNK_BYTES", 7 * 4 * VOCAB)
    model = adapted(tiny("llama"))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    inputs = batch(packing=False)
    own = model(**inputs).loss
    own.backward()
    expected = grads(model)
    loss = causal_lm_loss(model, inputs)
    loss.backward()
    got = grads(model)
    assert abs(loss.item() - own.item()) <= REL * abs(own.item())
    for n, g in expected.items():
        assert (got[n] - g).abs().max() <= REL * g.abs().max(), n
