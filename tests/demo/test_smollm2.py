"""The SmolLM2 build: a plain float32 safetensors Llama directory, built once and reused; and its
example task's data (answers are in the note, eval trips never in train)."""

import json

from safetensors import safe_open

from demo.smollm2 import build_smollm2, smollm2_dir
from demo.smollm2_task import NOTES, build_smollm2_task_data, ticket


def test_the_build_is_a_float32_llama_directory_reused_as_is(smollm2):
    config = json.loads((smollm2 / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (
        30,
        576,
        49152,
    )
    assert "quantization_config" not in config
    with safe_open(smollm2 / "model.safetensors", "pt") as weights:
        tensors = [weights.get_slice(k) for k in weights.keys()]
        assert {t.get_dtype() for t in tensors} == {"F32"}
        count = 0
        for t in tensors:
            n = 1
            for d in t.get_shape():
                n *= d
            count += n
    assert count == 134_515_008  # the tied lm_head is stored once
    assert smollm2 == smollm2_dir()
    stamps = {p.name: p.stat().st_mtime_ns for p in smollm2.iterdir()}
    assert build_smollm2() == smollm2  # the cache: nothing is rebuilt
    assert {p.name: p.stat().st_mtime_ns for p in smollm2.iterdir()} == stamps


def test_the_task_data_is_deterministic_and_eval_trips_are_not_in_train(tmp_path):
    counts = build_smollm2_task_data(tmp_path / "a", n_train=200, n_eval=40)
    build_smollm2_task_data(tmp_path / "b", n_train=200, n_eval=40)
    assert counts == {"train": 200, "eval": 40}
    for split in ("train", "eval"):
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (
            tmp_path / "b" / f"{split}.jsonl"
        ).read_bytes()

    def answers(split):
        lines = (tmp_path / "a" / f"{split}.jsonl").read_text().splitlines()
        return [json.loads(line)["messages"] for line in lines]

    train, held_out = answers("train"), answers("eval")
    assert not {m[1]["content"] for m in train} & {m[1]["content"] for m in held_out}
    for user, assistant in train + held_out:
        name, rest = assistant["content"].split(": ")
        src, rest = rest.split(" -> ")
        dst, day = rest.split(", ")
        assert ticket(name, src, dst, day) == assistant["content"]
        note = user["content"].split("\n")[1]
        assert note in {n.format(name=name, src=src, dst=dst, day=day) for n in NOTES}
