"""The demo builders: byte-identical rebuilds, loadable HF files, exact tokenizer round trips,
disjoint splits and answers that really follow the stated rules."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import demo
import demo.base_model

REPO_ROOT = Path(__file__).resolve().parents[2]
# Tiny sizes: the same code paths as the default build, in about a second.
TINY_MODEL = {"pretrain_steps": 3, "hidden_size": 32, "num_layers": 1, "n_docs": 300, "seed": 3}
TINY_DATA = {"n_train": 300, "n_eval": 60, "seed": 5}


def tree_hashes(root: Path) -> dict[str, str]:
    """Relative path -> sha256 for every file under root."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    assert demo.build_demo_data(out, **TINY_DATA) == {"train": 300, "eval": 60}
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("base")
    assert demo.build_demo_base_model(out, **TINY_MODEL) == out
    return out


# --- data ---------------------------------------------------------------------------------------


def test_data_files_have_exactly_prompt_and_completion(data_dir):
    for name, n in (("train.jsonl", 300), ("eval.jsonl", 60)):
        raw = (data_dir / name).read_bytes()
        assert b"\r" not in raw and raw.endswith(b"\n")
        rows = read_jsonl(data_dir / name)
        assert len(rows) == n
        for row in rows:
            assert sorted(row) == ["completion", "prompt"]
            assert row["prompt"].endswith("\nAnswer:") and row["completion"].startswith(" ")
        # Sorted keys and compact default separators: what the spec promises, byte for byte.
        assert raw.decode().splitlines()[0] == json.dumps(rows[0], sort_keys=True)


def test_data_build_is_deterministic(data_dir, tmp_path):
    demo.build_demo_data(tmp_path, **TINY_DATA)
    assert tree_hashes(tmp_path) == tree_hashes(data_dir)


def test_data_seed_changes_the_data(data_dir, tmp_path):
    demo.build_demo_data(tmp_path, **{**TINY_DATA, "seed": TINY_DATA["seed"] + 1})
    assert tree_hashes(tmp_path)["train.jsonl"] != tree_hashes(data_dir)["train.jsonl"]


def parse_prompt(prompt: str) -> tuple[str, list[str]]:
    """(rule name, input words) from a prompt built by format_prompt."""
    head, _, _ = prompt.partition("\n")
    instruction, _, words = head.partition(": ")
    names = [name for name, (text, _) in demo.RULES.items() if text == instruction]
    assert len(names) == 1, prompt
    return names[0], words.split(" ")


def test_answers_follow_the_rules(data_dir):
    rules_seen = set()
    for name in ("train.jsonl", "eval.jsonl"):
        for row in read_jsonl(data_dir / name):
            rule, words = parse_prompt(row["prompt"])
            rules_seen.add(rule)
            assert demo.MIN_WORDS <= len(words) <= demo.MAX_WORDS
            assert set(words) <= set(demo.TASK_WORDS)
            expected = demo.RULES[rule][1](words)
            assert row["completion"] == "".join(f" {w}" for w in expected)
    assert rules_seen == set(demo.RULES)


def test_eval_never_reuses_a_train_word_sequence(data_dir):
    def sequences(name: str) -> list[tuple[str, ...]]:
        return [tuple(parse_prompt(r["prompt"])[1]) for r in read_jsonl(data_dir / name)]

    train, evals = sequences("train.jsonl"), sequences("eval.jsonl")
    assert len(set(evals)) == len(evals) and len(set(train)) == len(train)
    assert not set(train) & set(evals)


def test_unknown_rule_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown rules"):
        demo.build_demo_data(tmp_path, rules=("sort",))


# --- base model and tokenizer ---------------------------------------------------------------


def test_model_dir_loads_with_auto_classes(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in model_dir.iterdir()
    }
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert tok.is_fast
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == demo.SPECIAL_TOKENS
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}) == 3
    cfg = model.config
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (
        tok.pad_token_id, tok.bos_token_id, tok.eos_token_id,
    )  # fmt: skip
    assert cfg.vocab_size == len(tok)
    assert cfg.max_position_embeddings >= 256
    # Nothing machine-specific leaks into the saved config.
    assert str(model_dir) not in (model_dir / "config.json").read_text()


def test_model_generates_from_a_demo_prompt(model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    enc = tok("Reverse the words: cat red sun\nAnswer:", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, enc.input_ids.shape[1] + 4) or tok.eos_token_id in out[0].tolist()


def test_tokenizer_round_trips_demo_text(model_dir, data_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    for name in ("train.jsonl", "eval.jsonl"):
        for row in read_jsonl(data_dir / name):
            for text in (row["prompt"], row["completion"], row["prompt"] + row["completion"]):
                ids = tok(text).input_ids
                assert tok.decode(ids, skip_special_tokens=True) == text
            # loraflow tokenizes prompt and completion apart; that must equal the joint encoding.
            apart = tok(row["prompt"]).input_ids + tok(row["completion"]).input_ids
            assert apart == tok(row["prompt"] + row["completion"]).input_ids


def test_tokenizer_adds_no_special_tokens(model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok("First word of: cat dog\nAnswer:").input_ids
    assert ids == tok("First word of: cat dog\nAnswer:", add_special_tokens=False).input_ids
    assert not {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id} & set(ids)


def test_task_words_are_single_tokens_with_the_default_corpus():
    # Keeps completions short (one token per word); checked with the default tokenizer corpus.
    docs = demo.base_model.generic_documents(0, demo.base_model.DEFAULT_N_DOCS)
    tok = demo.base_model.train_tokenizer(
        docs + demo.base_model.task_like_lines(), demo.base_model.DEFAULT_VOCAB_SIZE
    )
    multi = [w for w in demo.TASK_WORDS if len(tok(" " + w).input_ids) != 1]
    assert multi == []


def test_base_model_build_is_deterministic_in_process(model_dir, tmp_path):
    demo.build_demo_base_model(tmp_path, **TINY_MODEL)
    assert tree_hashes(tmp_path) == tree_hashes(model_dir)


def test_base_model_and_data_are_identical_from_a_fresh_process(model_dir, data_dir, tmp_path):
    # A new interpreter with a different hash seed: catches set/dict ordering and global RNG state.
    code = (
        "import sys; import demo; "
        f"demo.build_demo_base_model(sys.argv[1], **{TINY_MODEL!r}); "
        f"demo.build_demo_data(sys.argv[2], **{TINY_DATA!r})"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "m"), str(tmp_path / "d")],
        cwd=REPO_ROOT, env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert tree_hashes(tmp_path / "m") == tree_hashes(model_dir)
    assert tree_hashes(tmp_path / "d") == tree_hashes(data_dir)


def test_base_model_seed_changes_the_weights(model_dir, tmp_path):
    demo.build_demo_base_model(tmp_path, **{**TINY_MODEL, "seed": TINY_MODEL["seed"] + 1})
    ours, theirs = tree_hashes(model_dir), tree_hashes(tmp_path)
    assert ours["model.safetensors"] != theirs["model.safetensors"]


def test_builders_restore_global_torch_state(tmp_path):
    import torch

    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    demo.build_demo_base_model(tmp_path, **TINY_MODEL)
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (threads, det)
