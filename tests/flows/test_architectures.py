"""`loraflow run`'s flow on tiny models of real architectures: each registers a version that
predicts through mlflow.pyfunc, with the base resolved at load time."""

from __future__ import annotations

import pytest

from models.config.run import config_from_dict
from tests.architectures import NAMES


def config(base, name: str):
    return config_from_dict(
        {
            "base_model": str(base),
            "data": {"path": "data", "max_seq_len": 64},
            "adapter": {"method": "lora", "r": 4, "alpha": 8, "target_modules": "all-linear"},
            "training": {"max_steps": 2, "batch_size": 2, "learning_rate": 5e-2},
            "evaluation": {"max_examples": 2, "max_new_tokens": 3},
            "registry": {"model_name": f"arch-{name.replace('_', '-')}"},
        }
    )


@pytest.mark.parametrize("name", NAMES)
def test_run_registers_a_version_that_predicts_through_pyfunc(
    project, arch_bases, prefect_harness, name
):
    import mlflow
    import torch

    from flows.finetune import finetune
    from models.evaluation.serving import load_adapted

    cfg = config(arch_bases[name], name)
    result = finetune(cfg)
    assert result.version == "1" and result.promoted
    model = mlflow.pyfunc.load_model(f"models:/{cfg.registry.model_name}@champion")
    prompt = "Repeat the words: red cat\nAnswer:"
    texts = model.predict([prompt])
    assert len(texts) == 1 and isinstance(texts[0], str)
    # The registry round trip serves the trained adapter on the right base weights.
    served = model.unwrap_python_model()
    trained, tokenizer = load_adapted(str(arch_bases[name]), result.adapter_dir)
    ids = tokenizer([prompt], return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(
            served.model(input_ids=ids).logits, trained(input_ids=ids).logits
        )
