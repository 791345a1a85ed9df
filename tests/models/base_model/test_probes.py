"""Packing and gradient checkpointing are decided on the base itself, for every architecture."""

from __future__ import annotations

import dataclasses

import pytest

from models.base_model.loading import ModelError, load_base, meta_model
from models.base_model.probes import (
    PROBE_LAYERS,
    check_gradient_checkpointing,
    check_packing,
    packing_difference,
    probe_model,
)
from models.checks import check_inputs
from models.config.specs import CheckSpec
from tests.architectures import NAMES, build_tiny
from tests.models.test_architectures import short_spec

# OPT derives its positions from the attention mask and ignores position_ids (learned absolute
# positions, no packed-mask detection): packed examples see each other, so packing is refused.
PACKING_REFUSED = {"opt"}


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", NAMES)
def test_packing_is_exact_or_refused(arch_bases, name):
    model, _ = load_base(str(arch_bases[name]))
    difference = packing_difference(model)
    if name in PACKING_REFUSED:
        assert difference > 1e-2
        with pytest.raises(ModelError) as e:
            check_packing(str(arch_bases[name]))
        # The check measures on its two-layer copy (models.base_model.probes.probe_model).
        checked = packing_difference(probe_model(str(arch_bases[name])))
        assert one_line(e) == (
            f"training.packing: base_model {arch_bases[name]} (OPTForCausalLM) lets packed "
            f"examples attend to each other (logits differ from each example alone by "
            f"{checked:.2g}): its attention ignores position_ids; set training.packing: false"
        )
    else:
        assert difference < 1e-5
        check_packing(str(arch_bases[name]))


@pytest.mark.parametrize("name", NAMES)
def test_the_packing_check_runs_a_small_copy_and_reads_no_weights(arch_bases, name, tmp_path):
    """The check builds the base's class from its config (two layers, a tiny vocabulary) and
    decides as the whole loaded model does: it works with the weight files gone."""
    import shutil

    full, _ = load_base(str(arch_bases[name]))
    probe = probe_model(str(arch_bases[name]))
    assert type(probe) is type(full)
    assert probe.config.num_hidden_layers == min(PROBE_LAYERS, full.config.num_hidden_layers)
    assert sum(p.numel() for p in probe.parameters()) < sum(p.numel() for p in full.parameters())
    config_only = tmp_path / name
    shutil.copytree(arch_bases[name], config_only, ignore=shutil.ignore_patterns("*.safetensors"))
    assert (packing_difference(probe) > 1e-2) == (packing_difference(full) > 1e-2)
    if name in PACKING_REFUSED:
        with pytest.raises(ModelError, match="training.packing"):
            check_packing(str(config_only))
    else:
        check_packing(str(config_only))


def test_the_probe_does_not_change_the_model_mode(arch_bases):
    model, _ = load_base(str(arch_bases["gpt2"]))
    model.train()
    packing_difference(model)
    assert model.training


@pytest.mark.parametrize("name", NAMES)
def test_gradient_checkpointing_is_supported_by_all_eight(arch_bases, name):
    check_gradient_checkpointing(meta_model(str(arch_bases[name])), str(arch_bases[name]))


def test_gradient_checkpointing_refused_where_the_model_code_lacks_it(tiny_base, tmp_path):
    """OpenAI GPT's code has no gradient checkpointing: refused in one line, naming the class."""
    build_tiny("openai_gpt", tmp_path, tiny_base)
    with pytest.raises(ModelError) as e:
        check_gradient_checkpointing(meta_model(str(tmp_path)), str(tmp_path))
    assert one_line(e) == (
        f"training.gradient_checkpointing: base_model {tmp_path} (OpenAIGPTLMHeadModel) does not "
        "support gradient checkpointing; set training.gradient_checkpointing: false"
    )


def check_spec(base, tiny_data, **fields) -> CheckSpec:
    train = short_spec(base, tiny_data)
    spec = CheckSpec(
        base_model=str(base), data=train.data, method="lora", target_modules="all-linear"
    )
    return dataclasses.replace(spec, **fields)


def test_the_check_stage_runs_both_checks_only_when_asked(arch_bases, tiny_data):
    opt = arch_bases["opt"]
    assert check_inputs(check_spec(opt, tiny_data))  # packing off: OPT is fine
    with pytest.raises(ModelError, match="training.packing: base_model"):
        check_inputs(check_spec(opt, tiny_data, packing=True))
    gpt2 = check_spec(arch_bases["gpt2"], tiny_data, packing=True, gradient_checkpointing=True)
    assert check_inputs(gpt2)


def test_the_check_stage_refuses_sharding_a_base_whose_layers_the_fsdp_plan_misses(
    arch_bases, tiny_data
):
    assert check_inputs(check_spec(arch_bases["opt"], tiny_data, sharding="fsdp"))
    with pytest.raises(ModelError) as e:  # GPT-2's layers are transformer.h.*
        check_inputs(check_spec(arch_bases["gpt2"], tiny_data, sharding="fsdp"))
    assert one_line(e).startswith("training.sharding fsdp: the FSDP plan of base model")


@pytest.mark.parametrize("name", ["gpt2", "gpt_neox"])
def test_gradient_checkpointing_trains_to_the_same_loss(arch_bases, tiny_data, tmp_path, name):
    """Where the check lets it through, checkpointed training computes the same step."""
    from models.training.train import train_adapter

    def losses(checkpointing):
        spec = short_spec(arch_bases[name], tiny_data, gradient_checkpointing=checkpointing)
        out = tmp_path / str(checkpointing)
        return [loss for _, loss in train_adapter(spec, output_dir=out).loss_history]

    assert losses(True) == pytest.approx(losses(False), rel=1e-5)


def test_packing_is_exact_on_smollm2(smollm2):
    """The real model's attention keeps packed examples apart (its probe copy, as checked)."""
    assert packing_difference(probe_model(str(smollm2))) < 1e-5
    check_packing(str(smollm2))
