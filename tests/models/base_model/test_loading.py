import json
import shutil

import pytest

from models.base_model.loading import (
    ModelError,
    check_target_modules,
    linear_layer_names,
    preflight_base,
)
from models.base_model.paths import canonical_base


def test_demo_base_passes_preflight(tiny_base):
    config = preflight_base(str(tiny_base))
    assert config["model_type"] == "llama"
    names = linear_layer_names(str(tiny_base))
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= set(
        names
    )
    assert "lm_head" not in names


def test_missing_dir_and_missing_config(tmp_path):
    with pytest.raises(ModelError, match="directory not found"):
        preflight_base(str(tmp_path / "nope"))
    with pytest.raises(ModelError, match="no config.json"):
        preflight_base(str(tmp_path))


def test_pickle_only_weights_are_refused(tiny_base, tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    shutil.copy(tiny_base / "config.json", model)
    (model / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelError, match=r"only pickle weights \(pytorch_model.bin\)"):
        preflight_base(str(model))


def test_remote_code_is_refused_unless_trusted(tiny_base, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(tiny_base, model)
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_x.X"}
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="needs remote code"):
        preflight_base(str(model))
    assert preflight_base(str(model), trust_remote_code=True)["auto_map"]


def test_target_modules_that_match_nothing_list_the_layers(tiny_base):
    names = linear_layer_names(str(tiny_base))
    check_target_modules(["q_proj", "v_proj"], names)
    check_target_modules("all-linear", names)
    with pytest.raises(ModelError) as err:
        check_target_modules(["q_proj", "query_key_value"], names)
    assert "['query_key_value'] match no module" in str(err.value)
    assert "q_proj" in str(err.value).split("linear layers are:")[1]


def test_canonical_base_is_absolute_for_paths(tiny_base, monkeypatch):
    monkeypatch.chdir(tiny_base.parent)
    assert canonical_base(f"./{tiny_base.name}") == str(tiny_base)
    assert canonical_base("meta-llama/Llama-2-7b-hf") == "meta-llama/Llama-2-7b-hf"
