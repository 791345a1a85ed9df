"""Tiny random-weight models of real architectures, built from their transformers config classes.

Each is saved like a hub checkpoint (safetensors, config.json) with the demo tokenizer beside it,
so every loraflow stage can load it offline. Sizes are the smallest each config accepts: two
layers, hidden size 32, so a whole matrix of them trains in seconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

SMALL = {"num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 256}
DECODER = {**SMALL, "hidden_size": 32, "intermediate_size": 64, "num_key_value_heads": 2}

# name -> (config class name, its settings)
ARCHITECTURES: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", DECODER),
    "qwen2": ("Qwen2Config", DECODER),
    "mistral": ("MistralConfig", {**DECODER, "sliding_window": 64}),
    "gemma2": ("Gemma2Config", {**DECODER, "head_dim": 8, "sliding_window": 64}),
    "phi3": ("Phi3Config", {**DECODER, "original_max_position_embeddings": 256}),
    # Dropout off (GPT-2's default is 0.1): tests compare packed and padded training steps.
    "gpt2": (
        "GPT2Config",
        {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 256, "resid_pdrop": 0.0}
        | {"embd_pdrop": 0.0, "attn_pdrop": 0.0},
    ),
    "gpt_neox": ("GPTNeoXConfig", {**SMALL, "hidden_size": 32, "intermediate_size": 64}),
    "opt": (
        "OPTConfig",
        {**SMALL, "hidden_size": 32, "ffn_dim": 64, "word_embed_proj_dim": 32},
    ),
    # Not in the matrix: its code has no gradient checkpointing (the refusal's test case).
    "openai_gpt": ("OpenAIGPTConfig", {"n_embd": 32, "n_layer": 1, "n_head": 4}),
}
NAMES = ("llama", "qwen2", "mistral", "gemma2", "phi3", "gpt2", "gpt_neox", "opt")


def build_tiny(name: str, out_dir: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A random-weight `name` model with the tokenizer of `tokenizer_dir`, saved to out_dir."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config_class, settings = ARCHITECTURES[name]
    config = getattr(transformers, config_class)(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **settings,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
